//! What the operator renders for an engine, read back by the engine's own loader: the tokens
//! file of a shared engine, with its Secrets' files in place, parses as the API's `Tokens`. Here
//! rather than beside the rendering because the operator's crate must not use the API's types.

use chronos::operator::controllers::database::objects::{SharedEngine, shared_objects};
use chronos::operator::crd::ChronosDatabase;
use serde_json::json;

fn database(name: &str, key: &str) -> ChronosDatabase {
    serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabase",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": {
            "key": key,
            "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}, "dbName": name},
            "s3": {"endpoint": "http://s3:8333", "credentialsSecretRef": {"name": "s3-creds"},
                   "buckets": {"json": format!("{name}-json"), "content": format!("{name}-content"),
                               "backups": format!("{name}-backups")}}
        }
    }))
    .unwrap()
}

#[test]
fn the_engine_loads_the_tokens_file_the_operator_renders() {
    let (a, b) = (database("a", "a"), database("b", "bee"));
    let settings = SharedEngine {
        image: "img".into(),
        replicas: 1,
    };
    let objects = shared_objects("shop", &[&a, &b], &[], &settings).unwrap();
    let data = objects.config.data.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for db in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(format!("{db}-tokens"))).unwrap();
        for scope in ["read", "write", "admin"] {
            std::fs::write(
                dir.path().join(format!("{db}-tokens/{scope}")),
                format!("{db}-{scope}-0123456789abcdef"),
            )
            .unwrap();
        }
    }
    let text = String::from_utf8(data["tokens.json"].0.clone())
        .unwrap()
        .replace("/secrets/", &format!("{}/", dir.path().display()));
    chronos::api::auth::Tokens::parse(&text).unwrap();
}
