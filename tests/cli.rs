//! The `sfu` binary as an operator runs it: config errors, dev mode, tokens, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::Client;
use serde_json::json;

const SFU: &str = env!("CARGO_BIN_EXE_sfu");

fn sfu(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(SFU);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("sfu runs")
}

#[test]
fn serve_without_config_explains_what_is_missing() {
    let out = sfu(&["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.api_key"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn bad_config_values_name_their_key() {
    let out = sfu(&["serve", "--dev"], &[("SFU_HTTP_PORT", "notaport")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.port"));

    let dir = std::env::temp_dir().join(format!("sfu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[room]\nmax_participants = -3\n").unwrap();
    let out = sfu(&["serve", "--dev", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("room.max_participants"));

    let out = sfu(&["serve", "--config", "/nonexistent/sfu.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sfu.toml"));
}

#[test]
fn token_command_mints_a_verifiable_token() {
    let out = sfu(
        &[
            "token",
            "--dev",
            "--room",
            "demo",
            "--identity",
            "alice",
            "--name",
            "Alice",
            "--no-chat",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let config = common::config(|_| {});
    let claims = sfu::auth::Auth::new(&config.auth)
        .verify_participant(token.trim())
        .unwrap();
    assert_eq!(claims.identity(), "alice");
    assert_eq!(claims.room.as_deref(), Some("demo"));
    assert!(!claims.grants.chat && claims.grants.publish);

    let out = sfu(&["token", "--dev", "--admin"], &[]);
    let admin = String::from_utf8(out.stdout).unwrap();
    assert!(sfu::auth::Auth::new(&config.auth)
        .verify_admin(Some(&format!("Bearer {}", admin.trim())))
        .is_ok());
}

#[tokio::test]
async fn dev_server_serves_and_says_goodbye_on_sigterm() {
    let mut child = Command::new(SFU)
        .args(["serve", "--dev"])
        .env("SFU_HTTP_PORT", "0")
        .env("SFU_HTTP_BIND", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sfu starts");
    let stdout = child.stdout.take().unwrap();
    let port = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.split("http://localhost:").nth(1).map(|p| {
                p.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
        })
    })
    .await
    .unwrap()
    .expect("dev mode prints its URL");
    let base = format!("127.0.0.1:{port}");
    let health = reqwest::get(format!("http://{base}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sfu_rooms"));

    let dev: serde_json::Value = reqwest::get(format!("http://{base}/api/dev/token?name=Ann"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut client = Client::connect_url(&format!("ws://{base}/ws")).await;
    let joined = client
        .request(json!({"type":"join","token":dev["token"]}))
        .await;
    assert_eq!(joined["room"], "demo");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(client.recv_type("leave").await["reason"], "server_shutdown");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn load_explains_a_bad_bitrate_and_documents_how_it_counts() {
    let out = sfu(&["load", "--video-bitrate", "fast"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1.5M"), "{stderr}");
    let help = sfu(&["load", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("clear SRTP header"), "{help}");
}
