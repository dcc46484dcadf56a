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
    let err = Config::parse("[gateway]\ncompression = \"gzip\"\n").unwrap_err().to_string();
    assert!(err.contains("gzip") && err.contains("`on`"), "{err}");
    let zero = Config::parse("[gateway]\ncompression_level = 0\n").unwrap();
    assert!(zero.validate().unwrap_err().to_string().contains("compression_level"));
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
    // A URL refused is named without its password.
    for (text, key) in [
        ("[control]\ndatabase = \"mysql://u:Pw-1@db/x\"\n", "database"),
        ("[control]\nstate = \"redis\"\nnode_id = 1\nredis_url = \"http://u:Pw-1@h\"\n", "redis_url"),
        ("[queue]\nkind = \"redis\"\n[queue.redis]\nurl = \"http://u:Pw-1@h\"\n", "queue url"),
    ] {
        let err = Config::parse(text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("u:***@") && !err.contains("Pw-1"), "{err}");
    }
    let cfg = Config::parse("[control]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.local\"]\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("trusted_proxies") && err.contains("proxy.local"), "{err}");
    // The page's API and socket: paths on its origin or full URLs, nothing a policy would misread.
    let cfg =
        Config::parse("[control]\nsite_api_url = \"/api\"\nsite_ws_url = \"wss://chat.example.com/ws\"\n")
            .unwrap();
    cfg.validate().expect("a path and a URL");
    for (key, bad) in
        [("site_api_url", "api"), ("site_api_url", "wss://h"), ("site_ws_url", "/ws; script-src *")]
    {
        let cfg = Config::parse(&format!("[control]\n{key} = {bad:?}\n")).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains(key), "{key} = {bad:?}");
    }
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
    assert_eq!(configs.len(), 9, "compose: two controls, two gateways, two workers; Kubernetes: one of each");
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

const K8S_BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base");

/// The base's ConfigMap generators: (ConfigMap name, key, file), from `files: [KEY=FILE]`.
fn config_map_generators() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(Path::new(K8S_BASE).join("kustomization.yaml")).unwrap();
    let mut found = Vec::new();
    let mut lines = text.lines().skip_while(|l| *l != "configMapGenerator:").skip(1);
    while let Some(name) = lines.next().and_then(|l| l.strip_prefix("  - name: ")) {
        let files = lines.next().and_then(|l| l.strip_prefix("    files: [")?.strip_suffix(']')).unwrap();
        for file in files.split(", ") {
            let (key, file) = file.split_once('=').unwrap();
            found.push((name.to_owned(), key.to_owned(), file.to_owned()));
        }
    }
    found
}

/// The `GOCHAT_…` variables the manifests give each role's container (base and overlays):
/// (role, variable, value), for `- name: N` / `value: V` pairs and `- { name: N, value: V }`.
fn manifest_env() -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for manifest in files_under(&Path::new(DEPLOY).join("k8s"), ".yaml") {
        let text = std::fs::read_to_string(&manifest).unwrap();
        for doc in text.split("\n---\n") {
            let Some(role) = doc.lines().find_map(|l| l.strip_prefix("  name: gochat-")) else { continue };
            let mut lines = doc.lines().map(str::trim).peekable();
            while let Some(line) = lines.next() {
                let flow = line
                    .strip_prefix("- { name: ")
                    .and_then(|f| f.strip_suffix(" }")?.split_once(", value: "));
                let (name, value) = if let Some((name, value)) = flow {
                    (name, value.trim_matches('\''))
                } else if let Some(name) = line.strip_prefix("- name: ") {
                    match lines.peek().and_then(|l| l.strip_prefix("value: ")) {
                        Some(value) => (name, value),
                        None => continue,
                    }
                } else {
                    continue;
                };
                if name.starts_with("GOCHAT_") {
                    found.push((role.to_owned(), name.to_owned(), value.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn kubernetes_configs_are_valid_with_the_environment_the_pods_get() {
    let generators = config_map_generators();
    assert_eq!(generators.len(), 3, "a config per role: {generators:?}");
    let env = manifest_env();
    for (name, key, file) in &generators {
        let role = name.strip_prefix("gochat-").unwrap();
        // The file, then each GOCHAT_<SECTION>__<KEY> the role's pods get, applied as gochat
        // applies them, with `$(VAR)` as a pod would fill it in.
        let mine: Vec<_> = env.iter().filter(|e| e.0 == role).collect();
        assert!(mine.iter().any(|e| e.1.ends_with("__ID")), "{role}: its id does not come from the pod");
        let vars = mine.iter().map(|(_, var, value)| {
            let value = value.replace("$(POD_NAME)", "gochat-sample-0").replace("$(POD_IP)", "10.1.2.3");
            (var.into(), value.replace("$(POD_NAMESPACE)", "gochat").into())
        });
        let what = format!("deploy/k8s/base/{file} with its pods' environment");
        let cfg = Config::load_with_env(Some(&Path::new(K8S_BASE).join(file)), vars)
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        match cfg.validate() {
            Ok(()) => {}
            Err(e) if !cfg!(feature = "etcd") && e.to_string().contains("--features etcd") => {}
            Err(e) => panic!("{what}: {e}"),
        }
        // Every pod of the role mounts the generated ConfigMap at /etc/gochat and reads the key.
        let manifest = std::fs::read_to_string(Path::new(K8S_BASE).join(format!("{role}.yaml"))).unwrap();
        assert!(manifest.contains(&format!("configMap: {{ name: {name} }}")), "{role}.yaml mounts no {name}");
        assert!(manifest.contains("mountPath: /etc/gochat,"), "{role}.yaml: the config is mounted elsewhere");
        assert!(
            manifest.contains(&format!("/etc/gochat/{key}")),
            "{role}.yaml does not read /etc/gochat/{key}"
        );
    }
}

#[test]
fn kubernetes_trusts_no_proxy_by_default() {
    let text = std::fs::read_to_string(Path::new(K8S_BASE).join("control.toml")).unwrap();
    let cfg = Config::parse(&text).unwrap();
    assert!(cfg.control.trusted_proxies.is_empty(), "any pod could claim any client address");
}

#[test]
fn the_seccomp_profiles_are_one_and_allow_io_uring() {
    let docker = std::fs::read_to_string(Path::new(DEPLOY).join("docker/seccomp-io_uring.json")).unwrap();
    let k8s = std::fs::read_to_string(Path::new(DEPLOY).join("k8s/overlays/io_uring/gochat-io_uring.json"))
        .unwrap();
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
