"""What a payload key's depth costs the S3 server: PUTs of 1 KiB from 16 threads, one key layout
at a time, counting the server process's CPU per PUT (docs/benchmarks.md, "Key layout").

Run against the test services (scripts/services.sh start), from the repository's root:

    python3 -m venv /tmp/kl && /tmp/kl/bin/pip install -q boto3
    source scripts/test-env.sh && /tmp/kl/bin/python benches/key_layout.py

Leaves its objects in a bucket of their own (`keylayout-…`) in the disposable test server.
"""

import os
import threading
import time
import uuid

import boto3
from botocore.config import Config

THREADS, PER_THREAD, ROUNDS = 16, 600, 3
LAYOUTS = {
    "c/<id>/v<ov>/<w>.json (before)": lambda c, i, v, w: f"{c}/{i}/v{v}/{w}.json",
    "c/<id>/v<ov>.<w>.json (now)": lambda c, i, v, w: f"{c}/{i}/v{v}.{w}.json",
    "c/<id>~<ov>~<w>.json (flat)": lambda c, i, v, w: f"{c}/{i}~{v}~{w}.json",
}


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["CHRONOS_TEST_S3_ENDPOINT"],
        aws_access_key_id=os.environ["CHRONOS_TEST_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["CHRONOS_TEST_S3_SECRET_KEY"],
        region_name=os.environ.get("CHRONOS_TEST_S3_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}),
    )


def server_cpu_seconds():
    """User + system CPU of the S3 server (SeaweedFS `weed`) so far."""
    pid = os.popen("pgrep -f 'weed -logdir'").read().split()[0]
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    bucket = "keylayout-" + uuid.uuid4().hex[:8]
    client().create_bucket(Bucket=bucket)
    clients = [client() for _ in range(THREADS)]
    body = b"x" * 1024
    print(f"{'layout':34} {'writes':7} {'PUT/s':>6} {'server CPU/PUT':>15}")
    for _ in range(ROUNDS):
        for name, key in LAYOUTS.items():
            collection = "c" + uuid.uuid4().hex[:6]
            for kind in ("create", "update"):
                # create: a new item per PUT (every item folder is new); update: one item per
                # thread, a new ov per PUT.
                def work(t):
                    item = str(uuid.uuid4())
                    for n in range(PER_THREAD):
                        if kind == "create":
                            item, ov = str(uuid.uuid4()), 0
                        else:
                            ov = n
                        clients[t].put_object(Bucket=bucket, Key=key(collection, item, ov, uuid.uuid4()), Body=body)

                cpu, started = server_cpu_seconds(), time.monotonic()
                threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                puts = THREADS * PER_THREAD
                elapsed, cpu = time.monotonic() - started, server_cpu_seconds() - cpu
                print(f"{name:34} {kind:7} {puts / elapsed:6.0f} {cpu / puts * 1000:12.2f} ms", flush=True)


if __name__ == "__main__":
    main()
