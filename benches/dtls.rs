//! What accepting RSA DTLS client certificates costs (vendor/PATCHES.md): the server verifies
//! one CertificateVerify signature per handshake against the client's certificate. Measured
//! through dimpl's own verifier, the code a handshake runs, for the certificates clients use:
//! ECDSA P-256 (browsers, webrtc-rs) and RSA 2048 (GStreamer's webrtcbin, OpenSSL stacks).
//!
//! `cargo bench --bench dtls`. Certificates and signatures are made with the `openssl` command
//! at start (Debian has it), so no key material is kept in the repository.

use std::path::Path;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use dimpl::crypto::{HashAlgorithm, SignatureAlgorithm};

/// A self-signed certificate (DER) and a SHA-256 signature of `data` by its key.
fn certificate_and_signature(dir: &Path, key: &[&str], data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let mut req = vec!["req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=bench"];
    req.extend_from_slice(key);
    req.extend_from_slice(&["-keyout", "key.pem", "-out", "cert.pem"]);
    run(&req);
    run(&[
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]);
    std::fs::write(dir.join("data"), data).expect("data");
    run(&["dgst", "-sha256", "-sign", "key.pem", "-out", "sig", "data"]);
    (
        std::fs::read(dir.join("cert.der")).expect("cert"),
        std::fs::read(dir.join("sig")).expect("sig"),
    )
}

fn verify(c: &mut Criterion) {
    let provider = dimpl::crypto::aws_lc_rs::default_provider();
    let verifier = provider.signature_verification;
    // A handshake transcript is a few kilobytes.
    let data = vec![0x5a_u8; 3000];
    let dir = std::env::temp_dir().join(format!("sfu-bench-dtls-{}", std::process::id()));
    let cases = [
        (
            "ecdsa_p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"][..],
            SignatureAlgorithm::ECDSA,
        ),
        (
            "rsa_2048",
            &["-newkey", "rsa:2048"][..],
            SignatureAlgorithm::RSA,
        ),
    ];
    let mut group = c.benchmark_group("dtls_client_certificate_verify");
    for (name, key, algorithm) in cases {
        let case_dir = dir.join(name);
        std::fs::create_dir_all(&case_dir).expect("temp dir");
        let (cert, sig) = certificate_and_signature(&case_dir, key, &data);
        verifier
            .verify_signature(&cert, &data, &sig, HashAlgorithm::SHA256, algorithm)
            .expect("the signature verifies");
        group.bench_function(name, |b| {
            b.iter(|| {
                verifier
                    .verify_signature(&cert, &data, &sig, HashAlgorithm::SHA256, algorithm)
                    .is_ok()
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, verify);
criterion_main!(benches);
