//! `deploy/kubernetes/failover-daemonset.yaml` checked without a cluster
//! (and without root): every document parses, the DaemonSet runs in the
//! host's network namespace with exactly the capabilities the daemon needs
//! (the systemd unit's set, the single source) and never privileged, it
//! mounts bpffs, /dev/net/tun and the state directories, its probes hit
//! the port the embedded config's `[admin] metrics_listen` binds, and that
//! config parses (with its `[cluster]` section).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

const MANIFEST: &str = "deploy/kubernetes/failover-daemonset.yaml";
const UNIT: &str = "dist/failover.service";

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Every YAML document of `text`, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{MANIFEST}: document {i}: {e}"))
        })
        .collect()
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{MANIFEST}: expected one {kind}");
    found[0]
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// A container of the pod by name, among `containers` and `initContainers`.
fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    arr(&pod["containers"])
        .iter()
        .chain(arr(&pod["initContainers"]))
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn all_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    arr(&pod["containers"])
        .iter()
        .chain(arr(&pod["initContainers"]))
}

/// The pod's volumes by name.
fn volumes(pod: &Value) -> BTreeMap<&str, &Value> {
    arr(&pod["volumes"])
        .iter()
        .map(|v| (s(&v["name"]), v))
        .collect()
}

/// Mount path -> (mount, volume) of a container.
fn mounts<'a>(pod: &'a Value, c: &'a Value) -> BTreeMap<String, (&'a Value, &'a Value)> {
    let vols = volumes(pod);
    arr(&c["volumeMounts"])
        .iter()
        .map(|m| {
            let vol = vols
                .get(s(&m["name"]))
                .unwrap_or_else(|| panic!("mount of unknown volume {}", m["name"]));
            (s(&m["mountPath"]).to_string(), (m, *vol))
        })
        .collect()
}

/// The mount of `c` whose path holds `file` (the longest such).
fn mount_holding<'a>(
    pod: &'a Value,
    c: &'a Value,
    file: &Path,
) -> Option<(String, &'a Value, &'a Value)> {
    mounts(pod, c)
        .into_iter()
        .filter(|(p, _)| file.starts_with(p))
        .max_by_key(|(p, _)| p.len())
        .map(|(p, (m, v))| (p, m, v))
}

/// The capabilities the daemon is started with: the systemd unit's
/// `CapabilityBoundingSet` (docs/deploy.md, "Capabilities"; what it keeps
/// after attaching is `failover_user::sys::caps::keep_set`), without the
/// `CAP_` prefix as Kubernetes spells them.
fn unit_capabilities() -> BTreeSet<String> {
    let unit = repo_file(UNIT);
    let line = |key: &str| -> BTreeSet<String> {
        let l = unit
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{UNIT}: no {key}="));
        l.split_whitespace()
            .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_string())
            .collect()
    };
    let bounding = line("CapabilityBoundingSet");
    assert_eq!(
        bounding,
        line("AmbientCapabilities"),
        "{UNIT}: bounding and ambient sets differ"
    );
    bounding
}

fn caps_of(c: &Value, field: &str) -> BTreeSet<String> {
    arr(&c["securityContext"]["capabilities"][field])
        .iter()
        .map(|v| s(v).to_string())
        .collect()
}

/// The ConfigMap's `failover.toml.in` rendered as the render-config init
/// container does: every `${VAR}` it uses must be in that container's env.
fn rendered_config(docs: &[Value], pod: &Value) -> String {
    let template = s(&by_kind(docs, "ConfigMap")["data"]["failover.toml.in"]).to_string();
    assert!(!template.is_empty(), "ConfigMap: no failover.toml.in");
    let render = container(pod, "render-config");
    let env: BTreeMap<&str, &Value> = arr(&render["env"])
        .iter()
        .map(|e| (s(&e["name"]), &e["valueFrom"]["fieldRef"]["fieldPath"]))
        .collect();
    let script = arr(&render["command"])
        .iter()
        .map(s)
        .collect::<Vec<_>>()
        .join(" ");
    let samples = [("NODE_NAME", "lb1"), ("POD_IP", "10.0.0.11")];
    let mut out = template;
    for (var, sample) in samples {
        let placeholder = format!("${{{var}}}");
        assert!(
            env.contains_key(var),
            "render-config has no env {var} (the template uses {placeholder})"
        );
        assert!(
            script.contains(&format!("s|\\{placeholder}|{placeholder}|g")),
            "render-config's script does not substitute {placeholder}"
        );
        out = out.replace(&placeholder, sample);
    }
    assert_eq!(
        env["NODE_NAME"], "spec.nodeName",
        "cluster.node: the node's name"
    );
    assert_eq!(
        env["POD_IP"], "status.podIP",
        "the node's address (hostNetwork)"
    );
    assert!(!out.contains("${"), "an unrendered placeholder:\n{out}");
    out
}

/// The rendered config through the daemon's own parser. Until
/// `failover_user::config` knows `[cluster]` the section is left out of
/// that check (the parse of the whole file must then fail on `cluster`
/// alone); the section itself is checked in [`config_parses`].
fn daemon_config(text: &str) -> failover_user::config::Config {
    match failover_user::config::parse(text, "failover.toml") {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(
                e.to_string().contains("cluster"),
                "the embedded failover.toml is refused: {e}"
            );
            let mut t: toml::Table = toml::from_str(text).expect("TOML");
            t.remove("cluster");
            let rest = toml::to_string(&t).expect("serializing");
            failover_user::config::parse(&rest, "failover.toml without [cluster]")
                .unwrap_or_else(|e| panic!("the embedded failover.toml is refused: {e}"))
        }
    }
}

struct Parsed {
    docs: Vec<Value>,
}

impl Parsed {
    fn load() -> Parsed {
        let docs = documents(&repo_file(MANIFEST));
        for (i, d) in docs.iter().enumerate() {
            assert!(
                d["apiVersion"].is_string() && d["kind"].is_string(),
                "{MANIFEST}: document {i} has no apiVersion/kind: {d}"
            );
        }
        Parsed { docs }
    }
    fn daemonset(&self) -> &Value {
        by_kind(&self.docs, "DaemonSet")
    }
    fn pod(&self) -> &Value {
        &self.daemonset()["spec"]["template"]["spec"]
    }
}

#[test]
fn documents_parse_and_belong_together() {
    let p = Parsed::load();
    let kinds: BTreeSet<&str> = p.docs.iter().map(|d| s(&d["kind"])).collect();
    for k in ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"] {
        assert!(kinds.contains(k), "{MANIFEST}: no {k}");
    }
    let ns = s(&by_kind(&p.docs, "Namespace")["metadata"]["name"]);
    for d in p.docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(s(&d["metadata"]["namespace"]), ns, "{}", d["kind"]);
    }
    let ds = p.daemonset();
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&labels[k], v, "the selector does not match the pod");
    }
    assert_eq!(
        s(&p.pod()["serviceAccountName"]),
        s(&by_kind(&p.docs, "ServiceAccount")["metadata"]["name"])
    );
    // Pinned images: a digest, not a tag alone.
    for c in all_containers(p.pod()) {
        let image = s(&c["image"]);
        let digest = image.split_once("@sha256:").map_or("", |(_, d)| d);
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: image {image:?} is not pinned by digest",
            c["name"]
        );
    }
}

#[test]
fn host_network_and_never_privileged() {
    let p = Parsed::load();
    let pod = p.pod();
    assert_eq!(
        pod["hostNetwork"], true,
        "the dataplane lives in the host's netns"
    );
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        pod["nodeSelector"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "dedicated LB nodes: a nodeSelector"
    );
    assert!(!arr(&pod["tolerations"]).is_empty(), "the LB nodes' taint");
    for c in all_containers(pod) {
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], true, "{} is privileged", c["name"]);
        assert!(
            caps_of(c, "drop").contains("ALL"),
            "{} does not drop ALL capabilities",
            c["name"]
        );
        for m in arr(&c["volumeMounts"]) {
            // Needs a privileged container, which this is not.
            assert_ne!(m["mountPropagation"], "Bidirectional", "{}", c["name"]);
        }
    }
    assert_ne!(pod["hostPID"], true);
    assert_ne!(pod["hostIPC"], true);
    let ds = &p.daemonset()["spec"];
    assert_eq!(ds["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(ds["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(ds["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(grace >= 10, "withdraw before exit needs time: {grace} s");
}

#[test]
fn capabilities_are_the_daemons() {
    let p = Parsed::load();
    let daemon = container(p.pod(), "failover");
    let want = unit_capabilities();
    assert_eq!(caps_of(daemon, "add"), want, "the daemon's capabilities");
    // What the daemon keeps after attaching is a subset of what it gets.
    use failover_user::sys::caps;
    let kept = caps::names(caps::keep_set(caps::CAP_BPF));
    for c in kept.split(", ") {
        let c = c.strip_prefix("CAP_").unwrap_or(c);
        assert!(
            want.contains(c),
            "caps.rs keeps {c}, the unit does not grant it"
        );
    }
    let bird = container(p.pod(), "bird");
    let bird_caps: BTreeSet<String> = ["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"]
        .map(String::from)
        .into();
    assert_eq!(caps_of(bird, "add"), bird_caps, "BIRD's capabilities");
    // Only the daemon needs more than BIRD's network capabilities; the
    // others get none.
    for c in all_containers(p.pod()) {
        if c["name"] != "failover" && c["name"] != "bird" {
            assert!(
                caps_of(c, "add").is_empty(),
                "{} adds capabilities",
                c["name"]
            );
        }
    }
}

#[test]
fn mounts_bpffs_tun_and_state() {
    let p = Parsed::load();
    let pod = p.pod();
    let daemon = container(pod, "failover");
    let m = mounts(pod, daemon);
    let host = |path: &str| -> (&Value, &Value) {
        let (mount, vol) = m
            .get(path)
            .unwrap_or_else(|| panic!("the daemon does not mount {path}"));
        assert_eq!(
            s(&vol["hostPath"]["path"]),
            path,
            "{path}: not the host's {path}"
        );
        assert_ne!(mount["readOnly"], true, "{path} is read-only");
        (mount, vol)
    };
    host("/sys/fs/bpf");
    let (_, tun) = host("/dev/net/tun");
    assert_eq!(tun["hostPath"]["type"], "CharDevice");

    let cfg = daemon_config(&rendered_config(&p.docs, pod));
    assert!(cfg.daemon.bpffs.starts_with("/sys/fs/bpf"), "daemon.bpffs");
    // The state directory, the audit log and the events file survive a
    // restart of the pod: host directories.
    let mut files: Vec<PathBuf> = vec![cfg.daemon.state_dir.join("states.json")];
    files.push(cfg.admin.audit_file.clone());
    files.extend(cfg.daemon.events_file.clone());
    for f in &files {
        let (path, mount, vol) = mount_holding(pod, daemon, f)
            .unwrap_or_else(|| panic!("{} is on no volume", f.display()));
        assert!(
            vol["hostPath"].is_object(),
            "{} is on {path}, not a host directory",
            f.display()
        );
        assert_ne!(mount["readOnly"], true, "{path} is read-only");
    }
    // The config file the daemon reads is the rendered one.
    let cmd: Vec<&str> = arr(&daemon["command"]).iter().map(s).collect();
    let at = cmd.iter().position(|a| *a == "--config").expect("--config");
    let config_path = Path::new(cmd[at + 1]);
    let (_, _, vol) = mount_holding(pod, daemon, config_path).expect("the config's volume");
    let render = container(pod, "render-config");
    let (_, rm, _) = mount_holding(pod, render, config_path).expect("rendered there");
    assert_eq!(rm["name"], vol["name"]);
    assert_ne!(rm["readOnly"], true);
}

#[test]
fn bird_shares_the_socket_and_the_include() {
    let p = Parsed::load();
    let pod = p.pod();
    let rendered = rendered_config(&p.docs, pod);
    let t: toml::Table = toml::from_str(&rendered).expect("TOML");
    let bgp = &t["cluster"]["bgp"];
    let bird = container(pod, "bird");
    // A native sidecar: up before the daemon, stopped after it.
    assert_eq!(bird["restartPolicy"], "Always");
    let cmd: Vec<&str> = arr(&bird["command"]).iter().map(s).collect();
    let sock = bgp["control_socket"].as_str().expect("control_socket");
    assert!(
        cmd.windows(2).any(|w| w == ["-s", sock]),
        "bird's socket is not {sock}: {cmd:?}"
    );
    let include = bgp["include"].as_str().expect("include");
    let bird_conf = s(&by_kind(&p.docs, "ConfigMap")["data"]["bird.conf.in"]);
    assert!(
        bird_conf.contains(&format!("include \"{include}\";")),
        "bird.conf does not include {include}"
    );
    let live = bgp["live_device"].as_str().expect("live_device");
    assert_eq!(live, "fo-live");
    for f in [sock, include] {
        let f = Path::new(f);
        let (_, _, in_bird) = mount_holding(pod, bird, f).expect("bird's mount");
        let (_, _, in_daemon) =
            mount_holding(pod, container(pod, "failover"), f).expect("the daemon's mount");
        assert_eq!(in_bird["name"], in_daemon["name"], "{}", f.display());
        assert!(in_bird["emptyDir"].is_object(), "{}", f.display());
    }
}

#[test]
fn probes_hit_the_metrics_listener() {
    let p = Parsed::load();
    let pod = p.pod();
    let cfg = daemon_config(&rendered_config(&p.docs, pod));
    let listen = cfg
        .admin
        .metrics_listen
        .expect("admin.metrics_listen is off");
    // Rendered from ${POD_IP}, the node's address: where the kubelet's
    // probes go when they name no host.
    assert_eq!(listen.ip().to_string(), "10.0.0.11");
    let daemon = container(pod, "failover");
    let ports: BTreeMap<&str, u64> = arr(&daemon["ports"])
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap_or(0)))
        .collect();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &daemon[probe]["httpGet"];
        assert!(get.is_object(), "the daemon has no {probe} httpGet");
        let port = match &get["port"] {
            Value::String(name) => *ports
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{probe}: no port named {name}")),
            v => v.as_u64().expect("port"),
        };
        assert_eq!(
            port,
            u64::from(listen.port()),
            "{probe}: not the metrics port"
        );
        assert_eq!(
            get["path"], "/metrics",
            "{probe}: the only HTTP route there"
        );
        assert!(get["host"].is_null(), "{probe}: the pod's (node's) IP");
    }
}

#[test]
fn config_parses() {
    let p = Parsed::load();
    let rendered = rendered_config(&p.docs, p.pod());
    let t: toml::Table = toml::from_str(&rendered).expect("the embedded failover.toml is TOML");
    let cluster = t
        .get("cluster")
        .and_then(|c| c.as_table())
        .expect("a [cluster] section");
    assert_eq!(cluster["node"].as_str(), Some("lb1"), "cluster.node");
    assert!(cluster["name"].as_str().is_some_and(|n| !n.is_empty()));
    for key in ["control_socket", "include", "live_device"] {
        assert!(cluster["bgp"][key].is_str(), "cluster.bgp.{key}");
    }
    let etcd = &cluster["etcd"];
    let endpoints = etcd["endpoints"]
        .as_array()
        .expect("cluster.etcd.endpoints");
    assert_eq!(endpoints.len(), 3, "a 3-member etcd cluster");
    for key in ["lease_ttl", "request_timeout"] {
        let v = etcd[key].as_str().expect(key);
        failover_user::config::parse_duration(v)
            .unwrap_or_else(|e| panic!("cluster.etcd.{key}: {e}"));
    }
    failover_user::config::parse_duration(cluster["warmup"].as_str().expect("warmup"))
        .expect("cluster.warmup");
    let cfg = daemon_config(&rendered);
    assert!(!cfg.services.is_empty());
}
