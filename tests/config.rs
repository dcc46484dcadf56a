//! The example config parses, validates, and documents exactly the defaults; every config
//! shipped (examples/cluster, deploy/) parses and validates, and the deployment files refer to
//! configs that exist.

use std::path::{Path, PathBuf};

use gochat::Config;

#[test]
fn example_config_is_the_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gochat.example.toml")).unwrap();
    let parsed = Config::parse(&text).expect("example parses");
    parsed.validate().expect("example validates");
    let as_value = |c: &Config| toml::Value::try_from(c).unwrap();
    assert_eq!(as_value(&parsed), as_value(&Config::default()), "example and defaults differ");
    // Every field is written out, not left to its default.
    let written: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(written, as_value(&Config::default()), "the example leaves out a field");
}

#[test]
fn only_client_listeners_face_the_network_by_default() {
    // gRPC between roles (gateway stats, logic, pushes) has no authentication: it must not be on
    // a public address unless an operator puts it there.
    let c = Config::default();
    let internal = [c.control.grpc_listen, c.gateway.grpc_listen];
    assert!(internal.iter().all(|a| a.ip().is_loopback()), "{internal:?}");
    // The REST API and the page are behind a proxy or load balancer in production.
    assert!(c.control.api_listen.ip().is_loopback() && c.control.site_listen.unwrap().ip().is_loopback());
    assert!(!c.gateway.ws_listen.ip().is_loopback(), "clients connect to the gateway directly");
    let admin = [c.gateway.admin_listen, c.control.admin_listen, c.worker.admin_listen];
    assert_eq!(admin, [None; 3], "metrics are served only when asked for");
}

#[test]
fn unknown_fields_and_bad_values_are_errors() {
    let err = Config::parse("[gateway]\nshardz = 2\n").unwrap_err().to_string();
    assert!(err.contains("shardz"), "{err}");
    let err = Config::parse("[gateway]\ndriver = \"kqueue\"\n").unwrap_err().to_string();
    assert!(err.contains("kqueue"), "{err}");
    let cfg = Config::parse("[gateway]\nping_after_secs = 90\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("ping_after_secs"));
    // io_uring validates where the kernel has it, and says why not elsewhere.
    let cfg = Config::parse("[gateway]\ndriver = \"io_uring\"\n").unwrap();
    match gochat_gateway::driver::uring::probe() {
        Ok(()) => cfg.validate().expect("io_uring available"),
        Err(why) => assert!(cfg.validate().unwrap_err().to_string().contains(&why)),
    }
    let cfg = Config::parse("[control]\nsite_listen = \"off\"\n[gateway]\ntcp_listen = \"off\"\n").unwrap();
    assert_eq!(
        (cfg.control.site_listen, cfg.gateway.tcp_listen),
        (None, None),
        "listeners can be turned off"
    );
    let again = Config::parse(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(
        (again.control.site_listen, again.gateway.tcp_listen),
        (None, None),
        "and stay off when written"
    );
    let err = Config::parse("[gateway]\ntcp_listen = \"nowhere\"\n").unwrap_err().to_string();
    assert!(err.contains("nowhere") && err.contains("off"), "{err}");
    // TLS settings go together, and a certificate that does not load is a config error.
    let cfg = Config::parse("[gateway]\nwss_listen = \"127.0.0.1:0\"\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("tls_cert") && err.contains("tls_key"), "{err}");
    let cfg = Config::parse("[gateway]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("wss_listen is off"));
    let cfg = Config::parse(
        "[gateway]\nwss_listen = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
    )
    .unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/c.pem") && err.contains("cannot read"), "{err}");
    let cfg = Config::parse("[control]\ntls_cert = \"c.pem\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("go together"));
    let cfg = Config::parse("[gateway]\nwss_listen = \"off\"\n").unwrap();
    assert_eq!(cfg.gateway.wss_listen, None);
    let cfg = Config::parse("[control]\nstate = \"redis\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("node_id"), "shared state needs a node number");
    let cfg = Config::parse("[control]\nstate = \"redis\"\n[discovery]\nkind = \"etcd\"\n").unwrap();
    if cfg!(feature = "etcd") {
        cfg.validate().expect("with etcd discovery, `gochat control` claims a node number");
    }
    let cfg = Config::parse("[control]\ndatabase = \"mysql://x\"\n").unwrap();
    assert!(cfg.validate().is_err());
    let cfg = Config::parse("[control]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.local\"]\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("trusted_proxies") && err.contains("proxy.local"), "{err}");
    let cfg = Config::parse("[control]\npush_burst = 0\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("push_burst"));
    let cfg = Config::parse("[control]\npush_per_second = 0\npush_burst = 0\n").unwrap();
    cfg.validate().expect("no burst needed without a limit");
}

/// Parses and validates a shipped config; a build without etcd says so rather than failing later.
fn check_shipped(what: &str, text: &str) {
    let cfg = Config::parse(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    match cfg.validate() {
        Ok(()) => {}
        Err(e) if !cfg!(feature = "etcd") && e.to_string().contains("--features etcd") => {}
        Err(e) => panic!("{what}: {e}"),
    }
}

#[test]
fn every_example_cluster_config_parses_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            check_shipped(&path.display().to_string(), &std::fs::read_to_string(&path).unwrap());
            seen += 1;
        }
    }
    assert_eq!(seen, 6, "two controls, two gateways, two workers");
}

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// Every file under `dir` (recursively) whose name ends with `suffix`, sorted.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn every_deploy_config_parses_and_validates() {
    let configs = files_under(Path::new(DEPLOY), ".toml");
    for path in &configs {
        check_shipped(&path.display().to_string(), &std::fs::read_to_string(path).unwrap());
    }
    assert_eq!(configs.len(), 6, "compose: two controls, two gateways, two workers");
}

#[test]
fn compose_mounts_files_that_exist_and_every_config_is_mounted() {
    let dir = Path::new(DEPLOY).join("docker");
    let compose = std::fs::read_to_string(dir.join("compose.yml")).unwrap();
    let mut mounted = Vec::new();
    // Paths from this folder: a volume (`- ./FILE:TARGET:ro`, `- ../FILE:TARGET:ro`) or
    // `seccomp=./FILE`; the build context (`../..`) is a folder.
    let words =
        compose.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(|l| l.split([' ', '"', '=']));
    for word in words.filter(|w| (w.starts_with("./") || w.starts_with("../")) && *w != "../..") {
        let (name, target) = word.split_once(':').unwrap_or((word, ""));
        assert!(dir.join(name).is_file(), "compose.yml names {name}, which deploy/docker does not have");
        if name.ends_with(".toml") {
            let target = target.split(':').next().unwrap();
            assert!(
                compose.contains(&format!("\"--config\", \"{target}\"")),
                "{name} is mounted at {target}, which no command reads"
            );
        }
        mounted.push(name.trim_start_matches("./").to_owned());
    }
    for config in files_under(&dir, ".toml") {
        let name = config.file_name().unwrap().to_string_lossy().into_owned();
        assert!(mounted.contains(&name), "deploy/docker/{name} is not used by compose.yml");
    }
    for needed in
        ["seccomp-io_uring.json", "prometheus.yml", "../grafana/gochat.json", "grafana/datasources.yml"]
    {
        assert!(mounted.iter().any(|m| m == needed), "compose.yml does not mount {needed}: {mounted:?}");
    }
}

/// Each ConfigMap's `data` entries in a multi-document manifest: (name, key, value), for
/// values written as `key: |` blocks indented four spaces.
fn config_maps(manifest: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for doc in manifest.split("\n---\n").filter(|d| d.lines().any(|l| l == "kind: ConfigMap")) {
        let name = doc.lines().skip_while(|l| *l != "metadata:").find_map(|l| l.strip_prefix("  name: "));
        let name = name.expect("a ConfigMap has a name");
        let mut lines = doc.lines().skip_while(|l| *l != "data:").skip(1).peekable();
        while let Some(key) = lines.next().and_then(|l| l.strip_prefix("  ")?.strip_suffix(": |")) {
            let mut value = String::new();
            while let Some(line) = lines.next_if(|l| l.is_empty() || l.starts_with("    ")) {
                value.push_str(line.get(4..).unwrap_or(""));
                value.push('\n');
            }
            found.push((name.to_owned(), key.to_owned(), value));
        }
    }
    found
}

/// The `@NAME@` placeholders in `text`.
fn placeholders(text: &str) -> Vec<&str> {
    text.split('@')
        .skip(1)
        .step_by(2)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .collect()
}

#[test]
fn kubernetes_config_maps_hold_valid_configs_that_the_pods_read() {
    let dir = Path::new(DEPLOY).join("k8s");
    let manifests = files_under(&dir, ".yaml");
    let all: Vec<(String, String, String)> =
        manifests.iter().flat_map(|m| config_maps(&std::fs::read_to_string(m).unwrap())).collect();
    assert_eq!(all.len(), 3, "a config per role: {:?}", all.iter().map(|c| &c.0).collect::<Vec<_>>());
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest).unwrap();
        let what = manifest.display();
        for (name, key, value) in config_maps(&text) {
            // The entrypoint substitutes every placeholder (sed), the way this does.
            let mut config = value.clone();
            for p in placeholders(&value) {
                assert!(
                    text.contains(&format!("s/@{p}@/${p}/g")),
                    "{what}: nothing substitutes @{p}@ in {name}"
                );
                config = config
                    .replace(&format!("@{p}@"), &format!("sample-{}", p.to_lowercase().replace('_', "-")));
            }
            check_shipped(&format!("{what}: ConfigMap {name}, {key}"), &config);
        }
        // Every ConfigMap a pod mounts exists, at /etc/gochat, with the key its entrypoint reads.
        for (at, _) in text.match_indices("configMap: { name: ") {
            let rest = &text[at + "configMap: { name: ".len()..];
            let name = &rest[..rest.find(' ').unwrap()];
            let keys: Vec<&str> = all.iter().filter(|c| c.0 == name).map(|c| c.1.as_str()).collect();
            assert!(!keys.is_empty(), "{what}: mounts ConfigMap {name}, which no manifest defines");
            assert!(text.contains("mountPath: /etc/gochat,"), "{what}: the config is mounted elsewhere");
            assert!(
                keys.iter().any(|k| text.contains(&format!(" /etc/gochat/{k} "))),
                "{what}: the entrypoint reads none of {name}'s keys {keys:?}"
            );
        }
    }
}

#[test]
fn the_seccomp_profiles_are_one_and_allow_io_uring() {
    let docker = std::fs::read_to_string(Path::new(DEPLOY).join("docker/seccomp-io_uring.json")).unwrap();
    let k8s = std::fs::read_to_string(Path::new(DEPLOY).join("k8s/seccomp/gochat-io_uring.json")).unwrap();
    assert_eq!(docker, k8s, "Docker's and Kubernetes' profiles differ");
    let profile: serde_json::Value = serde_json::from_str(&docker).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["action"] == "SCMP_ACT_ALLOW" && rule.get("args").is_none() && rule.get("includes").is_none()
        })
        .flat_map(|rule| rule["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()))
        .collect();
    for needed in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "epoll_wait",
        "sched_setaffinity",
        "accept4",
    ] {
        assert!(allowed.contains(&needed), "{needed} is not allowed");
    }
}
