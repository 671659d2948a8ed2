//! The deploy files: Kubernetes manifests against the Kubernetes schemas, the systemd unit
//! with `systemd-analyze verify`, and the configuration they carry.

use std::path::PathBuf;
use std::process::Command;

use settle_coordinator::Config;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn python() -> String {
    std::env::var("SETTLE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas() {
    let manifests = deploy("k8s/settle.yaml");
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(&manifests)
        .output()
        .expect("python runs; deploy/python.sh installs kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for kind in [
        "configmap",
        "secret",
        "deployment",
        "service",
        "poddisruptionbudget",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}/")),
            "{said}"
        );
    }
}

#[test]
fn the_kubernetes_deployment_runs_three_probed_scraped_replicas_on_a_valid_config() {
    let text = std::fs::read_to_string(deploy("k8s/settle.yaml")).expect("the manifests");
    for needed in [
        "replicas: 3",
        "path: /readyz",
        "path: /livez",
        "prometheus.io/scrape: \"true\"",
        "prometheus.io/path: \"/api/metrics\"",
        "secretRef:",
    ] {
        assert!(
            text.contains(needed),
            "deploy/k8s/settle.yaml lacks {needed}"
        );
    }
    // The ConfigMap's settle.toml is what the pods run: it must parse and validate.
    let toml: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("settle.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let config: Config = toml::from_str(&toml).expect("the ConfigMap's settle.toml parses");
    config.validate().expect("and is valid");
    assert!(!config.listen.ip().is_loopback() && !config.allow_destinations.is_empty());
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here; the unit was not verified");
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(deploy("systemd/settle.service")).expect("the unit");
    // Verify it as installed, with the binary this build made at the path it names.
    let dir = std::env::temp_dir().join(format!("settle-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("settle.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/settle",
            env!("CARGO_BIN_EXE_settle-under-test"),
        ),
    )
    .expect("written");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
