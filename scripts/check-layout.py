#!/usr/bin/env python3
"""The layout's rules, checked from the source text (issue 19): no import cycle between files of
`src/`, no file over the line budget, and the layering the README's Layout promises (backends reach
only the store contracts, the store reaches nothing above it, config knows no backend, api and
operator reach data through the engine's face).

Why a script and not `cargo modules`: that tool builds rust-analyzer (minutes of CI, 2 cores) to
answer a question `use` lines answer. Rust's module rules are simple enough to follow here: a path
starts at `crate`, `super`, `self` or a child module; a name a module re-exports (`pub use`) is
followed to the file that defines it, so importing `crate::engine::Error` depends on
`engine/error.rs`, not on `engine/mod.rs`.

Usage: scripts/check-layout.py [ROOT]   (exit 1 and a list of problems when a rule is broken)
"""

import fnmatch
import re
import sys
from pathlib import Path

MAX_LINES = 600
# Files that may be longer, each with the reason. Keep this short.
LONG_FILE_EXCEPTIONS: dict[str, str] = {}

# (files matching, may not depend on files matching, why)
LAYER_RULES = [
    ("src/engine/store/*", ["src/engine/backends/*", "src/engine/versioning*", "src/api/*",
                            "src/operator/*", "src/config*", "src/connect.rs"],
     "the store contracts sit at the bottom of the engine"),
    ("src/engine/backends/*", ["src/engine/versioning*", "src/engine/retry*", "src/engine/restore*",
                               "src/engine/retention*", "src/engine/content*", "src/api/*",
                               "src/operator/*", "src/config*", "src/connect.rs"],
     "a backend implements the store contracts and knows nothing above them"),
    ("src/config*", ["src/engine/backends/*", "src/api/*", "src/operator/*", "src/connect.rs"],
     "configuration is parsed and validated without knowing any backend"),
    ("src/api/*", ["src/engine/backends/*", "src/operator/*"],
     "the API reaches data through the engine's face"),
    ("src/operator/*", ["src/api/*"], "the operator does not serve data"),
]

USE_RE = re.compile(r"(?:^|[;{}\s])(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.S)
PATH_RE = re.compile(r"\b(crate|super|self|chronos)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
INLINE_MOD_RE = re.compile(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{")
RAW_STRING_RE = re.compile(r'b?r(#*)"')
CHAR_RE = re.compile(r"'(?:\\.[^']*|[^\\'])'")
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)


def strip_comments_and_strings(text: str) -> str:
    """Blank out comments, string and char literals in one pass (they may hold `crate::` or `{`)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i) if text.find("\n", i) != -1 else n
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif (m := RAW_STRING_RE.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            j = text.find(close, m.end())
            i = n if j == -1 else j + len(close)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and (m := CHAR_RE.match(text, i)):
            i = m.end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_inline_modules(module: tuple[str, ...], text: str):
    """Cut `mod x { … }` blocks out of a file's text: (the rest, [(module path, block text)])."""
    blocks = []
    while (m := INLINE_MOD_RE.search(text)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        inner, nested = split_inline_modules(module + (m.group(1),), text[m.end():i - 1])
        blocks += [(module + (m.group(1),), inner)] + nested
        text = text[:m.start()] + text[i:]
    return text, blocks


def expand_use_tree(tree: str) -> list[tuple[str, str]]:
    """`a::{b, c::{d as e}}` → [("a::b", "b"), ("a::c::d", "e")]: (path, name it binds)."""
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|::|[{},*]", tree)
    pos = 0

    def parse(prefix: list[str]) -> list[tuple[str, str]]:
        nonlocal pos
        out: list[tuple[str, str]] = []
        segs = list(prefix)
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == "{":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "}":
                    out += parse(segs)
                    if pos < len(tokens) and tokens[pos] == ",":
                        pos += 1
                pos += 1
                return out
            if tok in (",", "}"):
                break
            if tok == "::":
                pos += 1
                continue
            if tok == "*":
                pos += 1
                out.append(("::".join(segs), "*"))
                return out
            if tok == "as":
                pos += 1
                alias = tokens[pos]
                pos += 1
                out.append(("::".join(segs), alias))
                return out
            segs.append(tok)
            pos += 1
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        if segs:
            out.append(("::".join(segs), segs[-1]))
        return out

    result = []
    while pos < len(tokens):
        result += parse([])
        if pos < len(tokens) and tokens[pos] in (",", "}"):
            pos += 1
    return result


class Crate:
    def __init__(self, name: str, root_file: Path, src: Path):
        self.name = name
        self.src = src
        self.files: dict[tuple[str, ...], Path] = {}  # module path → file
        self.children: dict[tuple[str, ...], set[str]] = {}
        self.text: dict[tuple[str, ...], str] = {}
        # Inline `mod x { … }` blocks (tests, mostly): their text, under their own module path, so
        # `use super::*` inside them means the file itself, not its parent.
        self.inline: dict[tuple[str, ...], list[tuple[tuple[str, ...], str]]] = {}
        self._load((), root_file)

    def _load(self, module: tuple[str, ...], file: Path) -> None:
        text = strip_comments_and_strings(file.read_text())
        self.files[module] = file
        text, self.inline[module] = split_inline_modules(module, text)
        self.text[module] = text
        self.children[module] = set()
        if module:
            base = file.parent if file.name == "mod.rs" else file.with_suffix("")
        else:
            base = file.parent
        for name in MOD_RE.findall(text):
            for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
                if candidate.exists():
                    self.children[module].add(name)
                    self._load(module + (name,), candidate)
                    break

    def reexports(self, module: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for m in USE_RE.finditer(self.text[module]):
            if not m.group(1):
                continue
            for path, name in expand_use_tree(m.group(2)):
                if name != "*":
                    absolute = self.absolute(module, path.split("::"))
                    if absolute is not None:
                        out[name] = absolute
        return out

    def absolute(self, module: tuple[str, ...], segs: list[str]):
        """Module-relative path → absolute path inside this crate, or None (another crate)."""
        if not segs:
            return None
        head, rest = segs[0], segs[1:]
        if head == "crate":
            return tuple(rest)
        if head == "self":
            return module + tuple(rest)
        if head == "super":
            base = module
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            return base + tuple(segs)
        if head in self.children.get(module, ()):
            return module + tuple(segs)
        return None

    def resolve(self, path: tuple[str, ...], depth: int = 0) -> Path | None:
        """The file that defines what `path` names."""
        module: tuple[str, ...] = ()
        i = 0
        while i < len(path) and path[i] in self.children.get(module, ()):
            module = module + (path[i],)
            i += 1
        if i < len(path) and depth < 8:
            target = self.reexports(module).get(path[i])
            if target is not None and target != module + (path[i],):
                found = self.resolve(target + path[i + 1:], depth + 1)
                if found is not None:
                    return found
        return self.files.get(module)

    def edges(self, other: "Crate | None"):
        for module, text in self.text.items():
            here = self.files[module]
            targets: set[Path] = set()
            for scope, scope_text in [(module, text)] + self.inline[module]:
                paths = [p for m in USE_RE.finditer(scope_text) for p, _ in expand_use_tree(m.group(2))]
                paths += [m.group(1) + m.group(2) for m in PATH_RE.finditer(USE_RE.sub(" ", scope_text))]
                for path in paths:
                    segs = path.split("::")
                    if segs[0] == "chronos" and other is not None:
                        found = other.resolve(tuple(segs[1:]))
                    else:
                        absolute = self.absolute(scope, segs)
                        found = self.resolve(absolute) if absolute is not None else None
                    if found is not None and found != here:
                        targets.add(found)
            yield here, targets


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[list[Path]] = []
    counter = [0]

    def visit(v: Path) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def problems_of(root: Path) -> tuple[list[str], int, int]:
    src = root / "src"
    lib = Crate("lib", src / "lib.rs", src)
    binary = Crate("bin", src / "main.rs", src) if (src / "main.rs").exists() else None
    graph: dict[Path, set[Path]] = {}
    for crate, other in ((lib, None), (binary, lib)):
        if crate is None:
            continue
        for here, targets in crate.edges(other):
            graph.setdefault(here, set()).update(targets)

    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    problems: list[str] = []
    for scc in cycles(graph):
        problems.append("import cycle: " + " ↔ ".join(rel(p) for p in scc))
    for here, targets in sorted(graph.items()):
        for pattern, forbidden, why in LAYER_RULES:
            if not fnmatch.fnmatch(rel(here), pattern):
                continue
            for t in sorted(targets):
                if any(fnmatch.fnmatch(rel(t), f) for f in forbidden):
                    problems.append(f"layering: {rel(here)} uses {rel(t)} ({why})")
    for folder in ("src", "tests", "benches"):
        if not (root / folder).exists():
            continue
        for file in sorted((root / folder).rglob("*.rs")):
            lines = sum(1 for _ in file.open())
            if lines > MAX_LINES and rel(file) not in LONG_FILE_EXCEPTIONS:
                problems.append(f"long file: {rel(file)} has {lines} lines (budget {MAX_LINES})")
    return problems, len(graph), sum(len(t) for t in graph.values())


def self_test() -> None:
    """The checker on a made-up crate that breaks each rule once (and has look-alikes that don't),
    so a checker that stopped seeing a rule fails CI instead of passing everything."""
    import tempfile

    files = {
        "src/lib.rs": "pub mod a;\npub mod b;\npub mod c;\npub mod config;\npub mod engine;\n",
        # a ↔ b through a path in code; c only through a string and a comment (no edge).
        "src/a.rs": "use crate::b::B;\npub struct A;\n",
        "src/b.rs": "pub struct B;\nfn f() -> crate::a::A { crate::a::A }\n",
        "src/c.rs": "// use crate::a::A;\nconst S: &str = \"crate::b::B\";\n",
        # A re-export: using engine::Thing depends on engine/thing.rs, not on engine/mod.rs.
        "src/engine/mod.rs": "pub mod backends;\npub mod thing;\npub use thing::Thing;\n",
        "src/engine/thing.rs": "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        "src/engine/backends/mod.rs": "pub struct Backend;\n",
        "src/config.rs": "use crate::engine::backends::Backend;\nuse crate::engine::Thing;\n",
        "tests/long.rs": "//\n" * (MAX_LINES + 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        found, _, _ = problems_of(root)
    expected = [
        "import cycle: src/a.rs ↔ src/b.rs",
        "layering: src/config.rs uses src/engine/backends/mod.rs (configuration is parsed and validated without knowing any backend)",
        f"long file: tests/long.rs has {MAX_LINES + 1} lines (budget {MAX_LINES})",
    ]
    if found != expected:
        sys.exit("check-layout self-test failed:\n  found:    " + "\n            ".join(found)
                 + "\n  expected: " + "\n            ".join(expected))


def main() -> int:
    self_test()
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
    problems, files, edges = problems_of(root)
    for p in problems:
        print(p)
    print(f"check-layout: {files} files, {edges} imports between them, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
