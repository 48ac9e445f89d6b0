//! The cluster pipeline's errors as the user reads them: the message, the
//! details, what to do next, and the exit code.

use kubemark_deploy::Error;
use kubemark_deploy::error::Cause;

use crate::report::{self, Failure};

/// The library's error, with what to do about it.
pub fn failure(e: Error) -> Failure {
    let code = match &e {
        Error::Cancelled => report::INTERRUPTED,
        e if e.is_usage() => report::USAGE,
        _ => report::FAILED,
    };
    let mut details = Vec::new();
    let hint: Option<String> = match &e {
        Error::Usage(_) => None,
        Error::Kubeconfig { side, .. } => Some(format!(
            "check the {side}'s kubeconfig (--{}-kubeconfig, --{}-context)",
            if *side == kubemark_deploy::Side::External {
                "external"
            } else {
                "master"
            },
            if *side == kubemark_deploy::Side::External {
                "external"
            } else {
                "master"
            }
        )),
        Error::MasterKubeconfig { hint, .. } => Some(hint.clone()),
        Error::Undefined { missing, .. } => Some(format!(
            "set each with --set, e.g. {}",
            missing
                .iter()
                .map(|m| format!("--set {m}=..."))
                .collect::<Vec<_>>()
                .join(" ")
        )),
        Error::Template { .. } | Error::Manifest { .. } => {
            Some("fix the template (or choose another with --template)".into())
        }
        Error::Unreachable { side, cause, .. } => {
            let flag = if *side == kubemark_deploy::Side::External {
                "--external-kubeconfig"
            } else {
                "--master-kubeconfig"
            };
            Some(match cause {
                Cause::NoServer => format!(
                    "nothing answers there: is the {side} running, and is the server address in its kubeconfig ({flag}) right?"
                ),
                Cause::Certificate => format!(
                    "the {side}'s certificate is not signed by the certificate-authority in its kubeconfig ({flag}): give the kubeconfig the CA that signed the server's certificate (certificate-authority-data), or check that the address is the cluster you mean"
                ),
                Cause::Credentials => format!(
                    "the {side} refused the credentials (401): the token or client certificate in its kubeconfig ({flag}) is wrong or has expired; get a new one (e.g. `kubectl create token NAME`)"
                ),
                Cause::Other => format!(
                    "is the {side} running and healthy, and is its kubeconfig's server address right ({flag})?"
                ),
            })
        }
        Error::Forbidden { side, .. } => Some(format!(
            "grant these to the {side}'s user (RBAC), or use a kubeconfig that has them"
        )),
        Error::Capacity { details: d, .. } => {
            details.extend(d.iter().cloned());
            Some("add nodes to the external cluster, lower --replicas or the requests (--kubelet-cpu, ...), or pass --skip-capacity-check".into())
        }
        Error::Refused {
            details: d, hint, ..
        } => {
            details.extend(d.iter().cloned());
            Some(hint.clone())
        }
        Error::Api { side, reason, .. } if reason.ends_with("(401)") => Some(format!(
            "the {side} refused the credentials (401): the token or client certificate in its kubeconfig is wrong or has expired; get a new one (e.g. `kubectl create token NAME`)"
        )),
        Error::Api { .. } | Error::Io { .. } => None,
        Error::Timeout { diagnosis, .. } => {
            details.extend(diagnosis.iter().cloned());
            Some("everything stays as it is: fix the cause above and run deploy again (it picks up where it is), or `cargo xtask deploy status` to look again".into())
        }
        Error::Cancelled => {
            Some("everything stays as it is; run deploy again to pick up where it stopped".into())
        }
    };
    Failure {
        message: e.to_string(),
        details,
        hint,
        code,
        json: false,
    }
}
