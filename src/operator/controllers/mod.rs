//! One reconciler per resource. Each reads its resource (from [`crate::operator::crd`]), acts on
//! the cluster and the backends, and writes status; the database controller keeps its pure
//! rendering (engine configuration, Kubernetes objects) in files of its own. [`changes`] runs
//! beside the collection reconciler: a follower of each collection's change feed.

pub mod changes;
pub mod collection;
pub mod database;
pub mod erasure;
pub mod restore;
pub mod retention;
