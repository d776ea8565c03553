//! Reading the certificates Connect hands out: PEM from the agent into rustls' types, and
//! the three facts the mesh needs from a peer's certificate: its SPIFFE ID (the URI
//! subject alternative name), its serial number in Consul's text form, and when it ends.

use crate::error::Error;
use crate::spiffe::SpiffeId;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Every certificate in a PEM document, in order.
pub(crate) fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what: what.to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A leaf (plus any intermediates after it) and its private key, ready to present in
/// handshakes. The key is loaded through `provider`, so a key type it cannot sign with
/// fails here, when the leaf arrives, not during a handshake.
pub(crate) fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let chain = certificates(cert_pem, "the leaf's CertPEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
        what: "the leaf's PrivateKeyPEM".into(),
        reason: e.to_string(),
    })?;
    let signer = provider.key_provider.load_private_key(key)?;
    let key = CertifiedKey::new(chain, signer);
    key.keys_match().or_else(|e| match e {
        // Not every key type can say whether it matches; the handshake would fail anyway.
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
        other => Err(Error::Tls(other)),
    })?;
    Ok(key)
}

/// What the mesh reads from a peer's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerCert {
    /// The SPIFFE URI as written in the certificate (what authorize is asked about).
    pub uri: String,
    pub id: SpiffeId,
    /// Consul's form: lower-case hex bytes joined by colons, no leading zero byte.
    pub serial: String,
    /// The end of its validity (`NotAfter`): a connection authenticated by it ends then.
    pub not_after: SystemTime,
}

/// The SPIFFE ID and serial of a certificate. Connect leaves carry exactly one URI SAN.
pub(crate) fn peer_cert(der: &CertificateDer<'_>) -> Result<PeerCert, Error> {
    let bad = |reason: String| Error::Certificate {
        what: "of the peer".into(),
        reason,
    };
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("unreadable subject alternative names: {e}")))?
        .ok_or_else(|| bad("no subject alternative name (no SPIFFE ID)".into()))?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
            _ => None,
        })
        .ok_or_else(|| bad("no spiffe:// URI in its subject alternative names".into()))?;
    let id = SpiffeId::parse(&uri)?;
    // Before 1970 is not a time a certificate that verified today can end at.
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map_or(UNIX_EPOCH, |seconds| {
            UNIX_EPOCH + Duration::from_secs(seconds)
        });
    Ok(PeerCert {
        uri,
        id,
        serial: serial_text(cert.raw_serial()),
        not_after,
    })
}

/// Go's `connect.HexString(cert.SerialNumber.Bytes())`: DER keeps a leading zero byte
/// for serials whose high bit is set, `big.Int.Bytes()` does not.
fn serial_text(raw: &[u8]) -> String {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let bytes = if first == raw.len() {
        &[0u8][..]
    } else {
        &raw[first..]
    };
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The text of a failed handshake's error: the mesh's own refusal when a verifier refused
/// the peer (rustls would print it with `Debug`), else the error as it is.
pub(crate) fn handshake_failure(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            other.to_string()
        }
        _ => error.to_string(),
    }
}

/// Whether a failed handshake failed because the peer's certificate was refused (by the
/// mesh's verifier or rustls' own checks: chain, validity, identity), as opposed to the
/// connection failing (reset, EOF, timeout, protocol error).
pub(crate) fn certificate_refused(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

/// The crypto provider every mesh TLS config uses: ring, the one reqwest already links.
/// Named explicitly rather than taken from the process default, which is ambiguous when
/// dependencies enable both ring and aws-lc-rs.
///
/// AES-128-GCM comes first (ring lists AES-256 first): with AES-NI both are far beyond
/// a gRPC hop's needs, 128 costs less CPU per record, and it is what Go's TLS stack, and
/// so Consul's own native library, prefers.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        use rustls::CipherSuite::*;
        match suite.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        }
    });
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::serial_text;

    #[test]
    fn serials_read_like_consul_writes_them() {
        assert_eq!(serial_text(&[0x00, 0x9c, 0x01]), "9c:01");
        assert_eq!(serial_text(&[0x07]), "07");
        assert_eq!(serial_text(&[0x00]), "00");
        assert_eq!(serial_text(&[0x01, 0x00, 0xff]), "01:00:ff");
    }
}
