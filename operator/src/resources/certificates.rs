//! cert-manager `Certificate`s for `spec.tls.certManager`: one for the
//! members' client port, one for their peer port, and one for the
//! operator's own client certificate (when members require client
//! certificates). cert-manager writes each into the Secret of the same
//! name, which the StatefulSet mounts and cert-manager renews in place.
//! Built as dynamic objects: the operator does not link cert-manager's
//! types, and needs its CRDs only when a cluster asks for an issuer.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{Names, metadata};
use crate::crd::{CertManagerIssuer, KvCluster};

pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";

/// The common name of the operator's certificate: the user it acts as once
/// authentication is enabled (membership, defragmentation and snapshots
/// need root's rights).
pub const OPERATOR_COMMON_NAME: &str = "root";

/// cert-manager's Certificate kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(CERT_MANAGER_GROUP, "v1", "Certificate"))
}

/// The Certificates a cluster with a cert-manager issuer needs.
pub fn certificates(kvc: &KvCluster, issuer: &CertManagerIssuer) -> Vec<DynamicObject> {
    let names = Names::of(kvc);
    let Some(tls) = &kvc.spec.tls else { return Vec::new() };
    let secrets = tls.secrets(&names.cluster);
    let issuer_ref = serde_json::json!({
        "name": issuer.name,
        "kind": issuer.kind.as_deref().unwrap_or("Issuer"),
        "group": issuer.group.as_deref().unwrap_or(CERT_MANAGER_GROUP),
    });
    let member = |secret: &str| {
        serde_json::json!({
            "secretName": secret,
            "issuerRef": issuer_ref,
            "dnsNames": names.tls_dns_names(),
            "ipAddresses": ["127.0.0.1"],
            // Members present their certificate as clients too (to peers,
            // and to each other's client port when forwarding).
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        })
    };
    let mut specs = Vec::new();
    specs.extend(secrets.client.as_deref().map(|s| (s.to_owned(), member(s))));
    specs.extend(secrets.peer.as_deref().map(|s| (s.to_owned(), member(s))));
    specs.extend(secrets.operator.as_deref().map(|s| {
        (
            s.to_owned(),
            serde_json::json!({
                "secretName": s,
                "issuerRef": issuer_ref,
                "commonName": OPERATOR_COMMON_NAME,
                "usages": ["digital signature", "key encipherment", "client auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            }),
        )
    }));
    specs
        .into_iter()
        .map(|(name, spec)| {
            let mut obj = DynamicObject::new(&name, &certificate_resource()).within(&names.namespace);
            obj.metadata = metadata(kvc, name);
            obj.data = serde_json::json!({ "spec": spec });
            obj
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::kvcluster;

    fn with_issuer(kind: Option<&str>) -> KvCluster {
        let mut kvc = kvcluster("demo", 3);
        kvc.spec.tls = Some(
            serde_json::from_value(serde_json::json!({"certManager": {"name": "ca", "kind": kind}}))
                .expect("tls"),
        );
        kvc
    }

    #[test]
    fn an_issuer_gets_client_peer_and_operator_certificates_into_the_mounted_secrets() {
        let kvc = with_issuer(Some("ClusterIssuer"));
        let issuer = kvc.spec.tls.as_ref().and_then(|t| t.cert_manager.clone()).expect("issuer");
        let certs = certificates(&kvc, &issuer);
        let names: Vec<_> = certs.iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["demo-client-tls", "demo-peer-tls", "demo-operator-tls"]);
        let secrets = kvc.spec.tls.as_ref().expect("tls").secrets("demo");
        assert_eq!(
            (secrets.client.as_deref(), secrets.peer.as_deref(), secrets.operator.as_deref()),
            (Some("demo-client-tls"), Some("demo-peer-tls"), Some("demo-operator-tls"))
        );
        for c in &certs {
            let spec = &c.data["spec"];
            assert_eq!(spec["secretName"], c.metadata.name.clone().unwrap_or_default());
            assert_eq!(spec["issuerRef"], serde_json::json!({"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}));
            assert_eq!(c.types.as_ref().map(|t| t.api_version.as_str()), Some("cert-manager.io/v1"));
            assert_eq!(c.metadata.namespace.as_deref(), Some("prod"));
            let owner = &c.metadata.owner_references.as_ref().expect("owned")[0];
            assert_eq!(owner.kind, "KvCluster");
        }
        let member = &certs[0].data["spec"];
        let dns: Vec<&str> = member["dnsNames"].as_array().expect("dnsNames").iter().filter_map(|v| v.as_str()).collect();
        assert!(dns.contains(&"*.demo-peer.prod.svc"), "{dns:?}");
        assert!(dns.contains(&"demo.prod.svc"), "{dns:?}");
        // Each possible member by name too: a peer's address is checked
        // against its certificate by looking names up where reverse
        // lookups are not answered.
        assert!(dns.contains(&"demo-0.demo-peer.prod.svc") && dns.contains(&"demo-8.demo-peer.prod.svc"), "{dns:?}");
        assert!(member["usages"].as_array().expect("usages").contains(&"client auth".into()));
        assert_eq!(certs[2].data["spec"]["commonName"], OPERATOR_COMMON_NAME);
        assert_eq!(certs[2].data["spec"]["usages"], serde_json::json!(["digital signature", "key encipherment", "client auth"]));
    }

    #[test]
    fn without_client_certificate_auth_the_operator_gets_no_certificate() {
        let mut kvc = with_issuer(None);
        if let Some(tls) = kvc.spec.tls.as_mut() {
            tls.client_cert_auth = Some(false);
        }
        let issuer = kvc.spec.tls.as_ref().and_then(|t| t.cert_manager.clone()).expect("issuer");
        let certs = certificates(&kvc, &issuer);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].data["spec"]["issuerRef"]["kind"], "Issuer");
    }
}
