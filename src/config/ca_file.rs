//! `UPSTREAM_CA_FILE`: extra root certificates for upstreams, read from a PEM file at start.

use std::path::Path;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    RootCertStore,
};

/// Reads the PEM file at `path`: every certificate in it, each one usable as a trust anchor.
/// The error says what is wrong, without the variable's name (the caller adds it).
pub fn read(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&pem).map_err(|why| format!("{}: {why}", path.display()))
}

/// The certificates of a PEM text, in order. Other PEM sections (a key beside the
/// certificate, say) are skipped; a file with no certificate at all is an error, as is one
/// whose base64 or DER is broken, so that a wrong file fails at start rather than as a 502
/// on the first request.
pub fn parse(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certificates = Vec::new();
    for (index, certificate) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let certificate =
            certificate.map_err(|e| format!("certificate {} is not valid PEM: {e}", index + 1))?;
        // What rustls does with a root when the client is built: checked here, once.
        RootCertStore::empty()
            .add(certificate.clone())
            .map_err(|e| format!("certificate {} is not a usable root: {e}", index + 1))?;
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap()
    }

    #[test]
    fn every_certificate_is_read_in_order_and_other_sections_skipped() {
        let (first, second) = (self_signed(), self_signed());
        let text = format!(
            "{}{}{}",
            first.cert.pem(),
            first.signing_key.serialize_pem(),
            second.cert.pem()
        );
        let certificates = parse(text.as_bytes()).unwrap();
        assert_eq!(
            certificates,
            [first.cert.der().clone(), second.cert.der().clone()]
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let key_only = self_signed().signing_key.serialize_pem();
        for text in ["", "not pem at all", key_only.as_str()] {
            let error = parse(text.as_bytes()).unwrap_err();
            assert!(error.contains("no PEM certificate"), "{text:?}: {error}");
        }
    }

    #[test]
    fn broken_base64_or_der_is_refused_naming_the_certificate() {
        let good = self_signed().cert.pem();
        let broken_base64 =
            format!("{good}-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let error = parse(broken_base64.as_bytes()).unwrap_err();
        assert!(error.contains("certificate 2 is not valid PEM"), "{error}");
        // Valid base64, but not a certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = parse(not_der.as_bytes()).unwrap_err();
        assert!(
            error.contains("certificate 1 is not a usable root"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let error = read(Path::new("/nonexistent/upstream-ca.pem")).unwrap_err();
        assert!(error.contains("/nonexistent/upstream-ca.pem"), "{error}");
    }

    proptest! {
        #[test]
        fn any_bytes_are_parsed_without_panicking(bytes: Vec<u8>) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_text_inside_a_certificate_block_is_parsed_without_panicking(body in "[A-Za-z0-9+/=\n]{0,200}") {
            let text = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
            let _ = parse(text.as_bytes());
        }
    }
}
