//! Builders of resources for the unit tests, so a test says what matters about a database or a
//! collection (`ChronosDatabase::test("a").dedicated(2).reachable()`) instead of spelling its
//! JSON. Every builder starts from a valid resource in namespace `shop`.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::conditions::{self, Observed};
use super::crd::collection::{ChronosCollection, ChronosCollectionSpec, CountedOp, CounterRuleSpec};
use super::crd::database::{
    BACKENDS_REACHABLE, Buckets, ChronosDatabase, ChronosDatabaseSpec, DatabaseType, DeletionPolicy, EngineSpec,
    MongoSpec, Routing, S3Credentials, S3Spec, SecretKeyRef, Tier,
};
use crate::engine::ContentKind;

fn time(second: i64) -> Time {
    Time(jiff::Timestamp::from_second(second).expect("a valid test time"))
}

impl ChronosDatabase {
    /// Database `name` in namespace `shop`, served by the shared engine under key `name`: MongoDB
    /// database `name` from Secret `mongo` (key `uri`), buckets `<name>-json`, `-content` and
    /// `-backups` with keys from Secret `s3-creds`; uid `uid-<name>`.
    pub(crate) fn test(name: &str) -> ChronosDatabase {
        let spec = ChronosDatabaseSpec {
            routing: None,
            key: Some(name.to_owned()),
            mongodb: MongoSpec {
                uri_secret_ref: SecretKeyRef {
                    name: "mongo".into(),
                    key: "uri".into(),
                },
                db_name: name.to_owned(),
            },
            s3: S3Spec {
                endpoint: "http://s3:8333".into(),
                region: "us-east-1".into(),
                force_path_style: true,
                buckets: Buckets {
                    json: format!("{name}-json"),
                    content: format!("{name}-content"),
                    backups: format!("{name}-backups"),
                },
                credentials_secret_ref: S3Credentials {
                    name: "s3-creds".into(),
                    access_key_key: "accessKey".into(),
                    secret_key_key: "secretKey".into(),
                },
                object_lock: false,
            },
            defaults: Default::default(),
            engine: None,
            ingress_from: None,
            deletion_policy: DeletionPolicy::Retain,
            verify: None,
        };
        let mut db = ChronosDatabase::new(name, spec);
        db.metadata.namespace = Some("shop".into());
        db.metadata.uid = Some(format!("uid-{name}"));
        db
    }

    /// `orders`, with a dedicated engine of two replicas and `inlineMaxBytes: 1024`: the database
    /// most rendering tests look at.
    pub(crate) fn orders() -> ChronosDatabase {
        ChronosDatabase::test("orders").inline_max_bytes(1024).dedicated(2)
    }

    /// In namespace `ns` instead (uid `<ns>-<name>`).
    pub(crate) fn in_namespace(mut self, ns: &str) -> Self {
        self.metadata.uid = Some(format!("{ns}-{}", self.name_any()));
        self.metadata.namespace = Some(ns.into());
        self
    }

    /// With a dedicated engine of `replicas` (image and resources by default).
    pub(crate) fn dedicated(mut self, replicas: i32) -> Self {
        self.spec.engine = Some(EngineSpec {
            replicas,
            image: None,
            resources: None,
        });
        self
    }

    /// Served under `key`.
    pub(crate) fn keyed(mut self, key: &str) -> Self {
        self.spec.key = Some(key.into());
        self
    }

    /// Found by a routing identity instead of a key.
    pub(crate) fn routed(mut self, database_type: DatabaseType, tier: Tier, ext_identifier: Option<&str>) -> Self {
        self.spec.key = None;
        self.spec.routing = Some(Routing {
            database_type,
            tier,
            ext_identifier: ext_identifier.map(str::to_owned),
        });
        self
    }

    pub(crate) fn inline_max_bytes(mut self, bytes: u64) -> Self {
        self.spec.defaults.inline_max_bytes = Some(bytes);
        self
    }

    pub(crate) fn max_payload_bytes(mut self, bytes: u64) -> Self {
        self.spec.defaults.max_payload_bytes = Some(bytes);
        self
    }

    pub(crate) fn ingress_from(mut self, peers: Vec<NetworkPolicyPeer>) -> Self {
        self.spec.ingress_from = Some(peers);
        self
    }

    /// MongoDB database `db_name`, its connection string from Secret `secret` (key `uri`).
    pub(crate) fn mongo_database(mut self, secret: &str, db_name: &str) -> Self {
        self.spec.mongodb.uri_secret_ref.name = secret.into();
        self.spec.mongodb.db_name = db_name.into();
        self
    }

    /// With `deletionPolicy: Delete`.
    pub(crate) fn drops_data(mut self) -> Self {
        self.spec.deletion_policy = DeletionPolicy::Delete;
        self
    }

    /// Created at `second` (Unix time).
    pub(crate) fn created(mut self, second: i64) -> Self {
        self.metadata.creation_timestamp = Some(time(second));
        self
    }

    /// Being deleted.
    pub(crate) fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(time(9));
        self
    }

    /// Its status says its backends were found reachable.
    pub(crate) fn reachable(mut self) -> Self {
        let observed = [Observed::ok(BACKENDS_REACHABLE, "Reachable", "")];
        let status = self.status.get_or_insert_default();
        status.conditions = conditions::merge(&[], &observed, None, conditions::now());
        self
    }

    /// Its status records its data on MongoDB deployment `backend`.
    pub(crate) fn on_mongo(mut self, backend: &str) -> Self {
        self.status.get_or_insert_default().mongo_backend = Some(backend.into());
        self
    }
}

impl ChronosCollection {
    /// Collection `name` of database `db` (resource `<db>-<name>`), with nothing indexed.
    pub(crate) fn test(db: &str, name: &str) -> ChronosCollection {
        let spec = ChronosCollectionSpec {
            database: db.into(),
            name: name.into(),
            indexed_props: Vec::new(),
            required_indexed: Vec::new(),
            content_props: Default::default(),
            counters: Vec::new(),
            hold: None,
            encryption: Default::default(),
            retention: None,
        };
        ChronosCollection::new(&format!("{db}-{name}"), spec)
    }

    /// Only `props` are indexed.
    pub(crate) fn indexed(mut self, props: &[&str]) -> Self {
        self.spec.indexed_props = props.iter().map(|p| p.to_string()).collect();
        self
    }

    /// With counter `name` of the versions that match `when` and were made by `on`.
    pub(crate) fn counting(mut self, name: &str, when: serde_json::Value, on: &[CountedOp]) -> Self {
        self.spec.counters.push(CounterRuleSpec {
            name: name.into(),
            when: Some(when),
            on: on.to_vec(),
        });
        self
    }

    /// With counter `big`: created versions whose `amount` is at least 100.
    pub(crate) fn counting_big_amounts(self) -> Self {
        self.counting(
            "big",
            serde_json::json!({"amount": {"$gte": 100}}),
            &[CountedOp::Create],
        )
    }

    /// Property `prop` kept in the content bucket as `kind`.
    pub(crate) fn content(mut self, prop: &str, kind: ContentKind) -> Self {
        self.spec.content_props.insert(prop.into(), kind);
        self
    }
}
