//! The webhook's TLS without cert-manager: a CA and serving certificate generated with rcgen,
//! kept in a Secret that every replica shares (created and rotated by compare-and-swap on the
//! Secret's resourceVersion), the CA put into the MutatingWebhookConfiguration's `caBundle`, and
//! a certificate resolver that swaps certificates without restarting the server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;

use crate::error::{Error, Result};
use crate::names::{MANAGER, WEBHOOK_NAME};

const ANNOTATION_NOT_BEFORE: &str = "spanprof.dev/not-before";
const ANNOTATION_NOT_AFTER: &str = "spanprof.dev/not-after";
const ANNOTATION_DNS_NAMES: &str = "spanprof.dev/dns-names";
const KEY_CA_CERT: &str = "ca.crt";
const KEY_CA_KEY: &str = "ca.key";
const KEY_PREVIOUS_CA: &str = "ca-previous.crt";
const KEY_CERT: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// Certificates start this much in the past, for clocks that lag ours.
const BACKDATE_SECS: i64 = 300;

/// The DNS names a Service is reached by from the API server.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// A CA and the serving certificate it signed, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA before the last rotation: still trusted, so replicas serving the old certificate
    /// keep working until they pick up the new one.
    pub previous_ca_pem: Option<String>,
    /// Validity of both certificates, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

fn cert_err(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

impl CertBundle {
    /// A new CA and serving certificate for `dns_names`, valid from `now` for `validity`.
    pub fn generate(
        dns_names: &[String],
        now: i64,
        validity: Duration,
        previous_ca_pem: Option<String>,
    ) -> Result<Self> {
        let not_before = now - BACKDATE_SECS;
        let not_after = now + i64::try_from(validity.as_secs()).map_err(cert_err)?;
        let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map_err(cert_err);

        let ca_key = KeyPair::generate().map_err(cert_err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "spanprof-operator webhook CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.not_before = at(not_before)?;
        ca.not_after = at(not_after)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(cert_err)?;

        let key = KeyPair::generate().map_err(cert_err)?;
        let mut leaf = CertificateParams::new(dns_names.to_vec()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
        leaf.distinguished_name = dn;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = at(not_before)?;
        leaf.not_after = at(not_after)?;
        let issuer = Issuer::new(ca, &ca_key);
        let cert = leaf.signed_by(&key, &issuer).map_err(cert_err)?;

        Ok(CertBundle {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            previous_ca_pem,
            not_before,
            not_after,
            dns_names: dns_names.to_vec(),
        })
    }

    /// What the API server must trust: the current CA and, during a rotation, the previous one.
    pub fn ca_bundle(&self) -> String {
        match &self.previous_ca_pem {
            Some(prev) => format!("{}{}", self.ca_cert_pem, prev),
            None => self.ca_cert_pem.clone(),
        }
    }

    /// Why the bundle must be replaced at `now`, if it must: when less than a third of its
    /// validity is left (as cert-manager renews), or it is not for `dns_names`.
    pub fn needs_rotation(&self, dns_names: &[String], now: i64) -> Option<&'static str> {
        let lifetime = self.not_after - self.not_before;
        if self.dns_names != dns_names {
            Some("the service's DNS names changed")
        } else if now >= self.not_after - lifetime / 3 {
            Some("less than a third of its validity is left")
        } else if now < self.not_before {
            Some("it is not valid yet (clock change)")
        } else {
            None
        }
    }

    /// The serving certificate and key, for rustls.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        certified_key(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// The Secret holding the bundle; with `resource_version`, a replace only succeeds if nobody
    /// changed the Secret since it was read.
    pub fn to_secret(&self, name: &str, namespace: &str, resource_version: Option<String>) -> Secret {
        let ts = |t: i64| k8s_openapi::jiff::Timestamp::from_second(t).map(|t| t.to_string()).unwrap_or_default();
        let mut data = BTreeMap::from([
            (KEY_CA_CERT.to_owned(), ByteString(self.ca_cert_pem.clone().into_bytes())),
            (KEY_CA_KEY.to_owned(), ByteString(self.ca_key_pem.clone().into_bytes())),
            (KEY_CERT.to_owned(), ByteString(self.cert_pem.clone().into_bytes())),
            (KEY_KEY.to_owned(), ByteString(self.key_pem.clone().into_bytes())),
        ]);
        if let Some(prev) = &self.previous_ca_pem {
            data.insert(KEY_PREVIOUS_CA.to_owned(), ByteString(prev.clone().into_bytes()));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                resource_version,
                labels: Some([("app.kubernetes.io/managed-by".to_owned(), MANAGER.to_owned())].into()),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_NOT_BEFORE.to_owned(), ts(self.not_before)),
                    (ANNOTATION_NOT_AFTER.to_owned(), ts(self.not_after)),
                    (ANNOTATION_DNS_NAMES.to_owned(), self.dns_names.join(",")),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// Reads a bundle written by [`CertBundle::to_secret`]; an error means "regenerate".
    pub fn from_secret(secret: &Secret) -> Result<Self, String> {
        let data = secret.data.as_ref().ok_or("no data")?;
        let text = |key: &str| -> Result<String, String> {
            let bytes = data.get(key).ok_or_else(|| format!("no {key}"))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not PEM text"))
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let time = |key: &str| -> Result<i64, String> {
            let v = annotations.get(key).ok_or_else(|| format!("no {key} annotation"))?;
            v.parse::<k8s_openapi::jiff::Timestamp>().map(|t| t.as_second()).map_err(|e| format!("{key}: {e}"))
        };
        let bundle = CertBundle {
            ca_cert_pem: text(KEY_CA_CERT)?,
            ca_key_pem: text(KEY_CA_KEY)?,
            cert_pem: text(KEY_CERT)?,
            key_pem: text(KEY_KEY)?,
            previous_ca_pem: text(KEY_PREVIOUS_CA).ok(),
            not_before: time(ANNOTATION_NOT_BEFORE)?,
            not_after: time(ANNOTATION_NOT_AFTER)?,
            dns_names: annotations
                .get(ANNOTATION_DNS_NAMES)
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        };
        // A Secret edited by hand into something rustls cannot load is as good as missing.
        bundle.certified_key().map_err(|e| e.to_string())?;
        Ok(bundle)
    }
}

/// A rustls certified key from a PEM certificate chain and a PEM private key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(cert_err)?;
    if certs.is_empty() {
        return Err(Error::Certificate("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(cert_err)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(cert_err)?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Hands rustls whatever certificate is current; swapping it needs no server restart.
#[derive(Debug, Default)]
pub struct CertResolver(RwLock<Option<Arc<CertifiedKey>>>);

impl CertResolver {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(key);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.0.read().map(|s| s.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

/// The rustls server config of the webhook.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The shared TLS Secret: read it, create it if missing, rotate it when due. Replicas race
/// through the API server: a create fails with 409 if another replica created it first, and a
/// replace carries the resourceVersion that was read, so only one rotation wins; the losers
/// re-read and use the winner's certificate.
pub struct SecretStore {
    pub api: Api<Secret>,
    pub name: String,
    pub namespace: String,
    pub dns_names: Vec<String>,
    pub validity: Duration,
}

/// What [`SecretStore::ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The Secret was fine as it was (or another replica just wrote it).
    Existing(CertBundle),
    /// This replica generated and stored a new bundle.
    Generated { bundle: CertBundle, why: String },
}

impl Ensured {
    pub fn bundle(&self) -> &CertBundle {
        match self {
            Ensured::Existing(b) | Ensured::Generated { bundle: b, .. } => b,
        }
    }
}

impl SecretStore {
    pub async fn ensure(&self, now: i64) -> Result<Ensured> {
        for _ in 0..5 {
            let Some(secret) = self.api.get_opt(&self.name).await? else {
                let bundle = CertBundle::generate(&self.dns_names, now, self.validity, None)?;
                match self
                    .api
                    .create(&PostParams::default(), &bundle.to_secret(&self.name, &self.namespace, None))
                    .await
                {
                    Ok(_) => return Ok(Ensured::Generated { bundle, why: "no certificate yet".into() }),
                    Err(e) if is_status(&e, 409) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let (why, previous_ca) = match CertBundle::from_secret(&secret) {
                Ok(b) => match b.needs_rotation(&self.dns_names, now) {
                    None => return Ok(Ensured::Existing(b)),
                    Some(why) => (why.to_owned(), Some(b.ca_cert_pem)),
                },
                Err(e) => (format!("the secret is unusable ({e})"), None),
            };
            let bundle = CertBundle::generate(&self.dns_names, now, self.validity, previous_ca)?;
            let rv = secret.metadata.resource_version.clone();
            let new = bundle.to_secret(&self.name, &self.namespace, rv);
            match self.api.replace(&self.name, &PostParams::default(), &new).await {
                Ok(_) => return Ok(Ensured::Generated { bundle, why }),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(self.name.clone()))
    }
}

/// Sets our webhook's `caBundle` by server-side apply of that one field, so the chart keeps
/// owning the rest of the registration.
pub async fn apply_ca_bundle(api: &Api<MutatingWebhookConfiguration>, config_name: &str, ca_pem: &str) -> Result<()> {
    // A server-side apply to a missing object (or entry) would try to create it from just the
    // caBundle and fail with a validation error that says nothing about what is missing.
    let missing =
        |message: &str| Error::WebhookConfiguration { name: config_name.to_owned(), message: message.to_owned() };
    let Some(current) = api.get_opt(config_name).await? else {
        return Err(missing("not found"));
    };
    if !current.webhooks.iter().flatten().any(|w| w.name == WEBHOOK_NAME) {
        return Err(missing(&format!("has no webhook named {WEBHOOK_NAME}")));
    }
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "clientConfig": {"caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)},
        }],
    });
    api.patch(config_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// Generated and rotated by the operator, shared through a Secret.
    Managed { secret_name: String, dns_names: Vec<String>, validity: Duration },
    /// Files provided by the user (e.g. a mounted cert-manager Secret), re-read on every check.
    /// With `ca_file`, the operator also keeps the webhook's caBundle set to it.
    Files { cert_file: PathBuf, key_file: PathBuf, ca_file: Option<PathBuf> },
}

/// Loads user-provided PEM files.
pub fn load_files(cert_file: &PathBuf, key_file: &PathBuf) -> Result<Arc<CertifiedKey>> {
    let cert = std::fs::read(cert_file)?;
    let key = std::fs::read(key_file)?;
    certified_key(&cert, &key)
}
