//! After the wait: delete the Nodes the fold named stale (their pods went
//! away in a scale-down, or they are dead), and only those.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};

use crate::error::{Error, Result, Side};
use crate::event::{Event, Events};
use crate::kubeconfig::Cluster;

/// Delete `names` from the master; how many went (one already gone counts as none).
pub async fn delete_stale(master: &Cluster, names: &[String], events: &Events) -> Result<usize> {
    let api: Api<Node> = Api::all(master.client.clone());
    let params = DeleteParams::default();
    let mut deleted = 0;
    for name in names {
        match crate::retry::call(|| api.delete(name, &params)).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::api(
                    Side::Master,
                    format!("deleting the stale node {name}"),
                )(e));
            }
        }
    }
    if !names.is_empty() {
        events.emit(Event::Deleted {
            kind: "stale hollow Node".into(),
            count: names.len(),
        });
    }
    Ok(deleted)
}
