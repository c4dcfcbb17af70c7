//! The two Services: a headless one whose per-pod DNS names are the
//! members' peer URLs, and a ClusterIP one that spreads clients over every
//! ready member.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CLIENT_PORT, Names, PEER_PORT, metadata};
use crate::crd::KvCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Headless, and publishing addresses of pods that are not ready: a member
/// must reach its peers by name before the cluster has a leader (at
/// bootstrap, after a full restart), which is exactly when none is ready.
pub fn peer_service(kvc: &KvCluster) -> Service {
    let names = Names::of(kvc);
    Service {
        metadata: metadata(kvc, names.peer_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("peer", PEER_PORT), port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Clients connect here; only ready members (with a leader) get traffic.
pub fn client_service(kvc: &KvCluster) -> Service {
    let names = Names::of(kvc);
    Service {
        metadata: metadata(kvc, names.client_service()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::kvcluster;

    #[test]
    fn peer_service_is_headless_and_publishes_unready_pods() {
        let svc = peer_service(&kvcluster("demo", 3));
        let spec = svc.spec.expect("spec");
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-peer"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec.ports.expect("ports").iter().map(|p| p.port).collect();
        assert_eq!(ports, vec![2380, 2379]);
    }

    #[test]
    fn client_service_selects_the_members_on_the_client_port() {
        let kvc = kvcluster("demo", 3);
        let svc = client_service(&kvc);
        let spec = svc.spec.expect("spec");
        assert_eq!(svc.metadata.name.as_deref(), Some("demo"));
        assert_eq!(spec.selector, Some(Names::of(&kvc).selector_labels()));
        assert_eq!(spec.ports.expect("ports")[0].port, 2379);
        assert_ne!(spec.publish_not_ready_addresses, Some(true));
    }
}
