//! The sampler in real containers, configured exactly as the operator's webhook configures it:
//! the pod the webhook produces (`inject::decide` + the JSON patch applied) is translated into
//! containerd containers — the demo app as a non-root user in one, the sampler in another,
//! sharing a PID namespace (held by a pause container, as a pod's is) and the context volume, with
//! each container's user, capabilities, no_new_privs, read-only root, seccomp (containerd's
//! RuntimeDefault), env and mounts (subPath included) taken from that pod. Run as root with
//! Debian's `containerd` and `runc` (scripts/test installs them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use spanprof_operator::crd::{SpanProfiling, SpanProfilingSpec};
use spanprof_operator::inject::{self, Decision, Defaults};
use spanprof_operator::names::{SIDECAR_NAME, VOLUME_NAME};
use spanprof_operator::pod_security::Level;

mod common;
use common::*;

/// A containerd of the test's own (own socket, root and state directories), stopped with every
/// container it ran when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    namespace: String,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Containerd {
    fn start() -> Containerd {
        for tool in ["containerd", "ctr", "runc", "setpriv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is missing: run scripts/test (it installs Debian's containerd and runc)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The CRI plugin is not needed (ctr talks to containerd directly); it is where
        // `restrict_oom_score_adj` would matter.
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{r}/containerd.sock\"\n[ttrpc]\n  address = \"{r}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            r = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            namespace: format!("spanprof-e2e-{}", std::process::id()),
            dir,
            daemon,
            containers: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr().arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success() {
            assert!(Instant::now() < deadline, "containerd did not start: {}", c.file("containerd.log"));
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.dir.path().join("containerd.sock")).args(["-n", &self.namespace]);
        cmd
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Runs `args` in a new container `id` on `rootfs` with ctr `flags`; its output goes to
    /// `<id>.log`.
    fn run(&self, id: &str, rootfs: &Path, flags: &[String], args: &[String]) {
        let log = self.dir.path().join(format!("{id}.log"));
        let out = self
            .ctr()
            .args(["run", "-d", "--log-uri"])
            .arg(format!("file://{}", log.display()))
            .args(flags)
            .arg("--rootfs")
            .arg(rootfs)
            .arg(id)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr run {id} {flags:?}: {}", String::from_utf8_lossy(&out.stderr));
        self.containers.borrow_mut().push(id.to_owned());
    }

    /// The host PID of container `id`'s process, while it runs.
    fn pid(&self, id: &str) -> Option<u32> {
        let out = self.ctr().args(["task", "ls"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id) && f.get(2) == Some(&"RUNNING")).then(|| f[1].parse().ok()).flatten()
        })
    }

    fn log(&self, id: &str) -> String {
        self.file(&format!("{id}.log"))
    }

    fn stop(&self, id: &str) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(self.ctr().args(["task", "kill", "-s", "SIGKILL", id]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pid(id).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        quiet(self.ctr().args(["task", "delete", "-f", id]));
        quiet(self.ctr().args(["container", "delete", id]));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids: Vec<String> = self.containers.borrow().iter().rev().cloned().collect();
        for id in ids {
            self.stop(&id);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A root filesystem with `files` (host path → path inside) and the shared libraries they load,
/// and `/var/run` → `/run` as Debian images have it.
fn rootfs(dir: &Path, files: &[(PathBuf, &str)]) {
    std::fs::create_dir_all(dir.join("var")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let _ = std::os::unix::fs::symlink("/run", dir.join("var/run"));
    for (src, dst) in files {
        copy_into(dir, src, dst);
        let ldd = Command::new("ldd").arg(src).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
            copy_into(dir, Path::new(lib), lib);
        }
    }
}

fn copy_into(root: &Path, src: &Path, dst: &str) {
    let to = root.join(dst.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(src, &to).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
}

/// The debug file of the host's glibc (libc6-dbg), by build ID, and where it goes in an image.
fn libc_debug_file() -> (PathBuf, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libc.so")).unwrap().to_owned();
    let out = Command::new("readelf").args(["-n", &libc]).output().expect("readelf (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let id =
        text.lines().find_map(|l| l.trim().strip_prefix("Build ID: ")).expect("libc has a build ID").trim().to_owned();
    let path = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    assert!(Path::new(&path).exists(), "{path} missing: install libc6-dbg (scripts/test does)");
    (PathBuf::from(&path), path)
}

/// The pod the webhook produces for the demo, with the sampler in `mode`.
fn injected_pod(server: u16, demo_port: u16, mode: &str, seccomp: bool) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "ride-0", "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "ride"},
            "annotations": {"spanprof.dev/inject": "true"}
        },
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "containers": [{
                "name": "demo", "image": "spanprof-demo",
                "env": [
                    {"name": "E2E_DEMO_LISTEN", "value": format!("127.0.0.1:{demo_port}")},
                    {"name": "E2E_LOAD_RPS", "value": "20"},
                    {"name": "E2E_WORK_SCALE", "value": "3"}
                ],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                // The app serves on the sampler's default metrics port: the webhook must pick another.
                "ports": [{"containerPort": 4041}]
            }]
        }
    });
    if seccomp {
        pod["spec"]["securityContext"]["seccompProfile"] = json!({"type": "RuntimeDefault"});
    }
    let spec: SpanProfilingSpec = serde_json::from_value(json!({
        "serverUrl": format!("http://127.0.0.1:{server}"),
        "uploadInterval": "1s",
        "sidecar": {"image": "spanprof-sidecar:e2e", "capabilities": mode}
    }))
    .unwrap();
    let mut sp = SpanProfiling::new("default", spec);
    sp.metadata.namespace = Some("shop".into());
    let defaults = Defaults {
        server_url: "http://unused:4040".into(),
        sidecar_image: "unused".into(),
        operator_namespace: "spanprof".into(),
        pod_security_default: Level::Privileged,
    };
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    match inject::decide(&typed, "shop", &[Arc::new(sp)], &defaults, || Level::Privileged) {
        Decision::Inject { patch, .. } => {
            json_patch::patch(&mut pod, &patch).unwrap();
            serde_json::from_value(pod).unwrap()
        }
        Decision::Skip(skip) => panic!("not injected: {skip}"),
    }
}

/// What the kubelet and runc would make of `c` in `pod`, as ctr flags and the command prefix that
/// sets the user, capabilities and no_new_privs (`setpriv`, since ctr has no flags for them).
struct Translated {
    flags: Vec<String>,
    prefix: Vec<String>,
    env: BTreeMap<String, String>,
}

/// Capabilities a root container gets by default (containerd's and Docker's default set).
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

fn translate(pod: &Pod, c: &Container, volumes: &BTreeMap<String, PathBuf>, pause_pid: u32) -> Translated {
    let spec = pod.spec.as_ref().unwrap();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let mut flags = vec!["--net-host".to_owned(), "--with-ns".to_owned(), format!("pid:/proc/{pause_pid}/ns/pid")];
    // Environment: literal values, and the downward API fields the webhook uses.
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let path = from
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .unwrap_or_else(|| panic!("unsupported valueFrom in {e:?}"));
                match path {
                    "metadata.name" => pod.metadata.name.clone().unwrap(),
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap(),
                    "spec.nodeName" => "node-1".into(),
                    other => panic!("unsupported fieldRef {other}"),
                }
            }
            (None, None) => String::new(),
            (Some(_), Some(_)) => panic!("value and valueFrom in {e:?}"),
        };
        flags.push("--env".into());
        flags.push(format!("{}={value}", e.name));
        env.insert(e.name.clone(), value);
    }
    // Mounts; a subPath is created in the volume with the volume's mode, as the kubelet does.
    for m in c.volume_mounts.iter().flatten() {
        let mut src = volumes.get(&m.name).unwrap_or_else(|| panic!("unknown volume {}", m.name)).clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            src = src.join(sub);
            std::fs::create_dir_all(&src).unwrap();
            std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        }
        let mode = if m.read_only == Some(true) { "ro" } else { "rw" };
        flags.push("--mount".into());
        flags.push(format!("type=bind,src={},dst={},options=rbind:{mode}", src.display(), m.mount_path));
    }
    if sc.privileged == Some(true) {
        flags.push("--privileged".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        flags.push("--read-only".into());
    }
    let seccomp = sc.seccomp_profile.as_ref().or(pod_sc.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
    match seccomp {
        Some("RuntimeDefault") => flags.push("--seccomp".into()),
        None | Some("Unconfined") => {}
        Some(other) => panic!("unsupported seccompProfile {other}"),
    }
    let caps = sc.capabilities.clone().unwrap_or_default();
    let added: Vec<String> = caps.add.iter().flatten().map(|c| c.trim_start_matches("CAP_").to_owned()).collect();
    let drop_all = caps.drop.iter().flatten().any(|c| c == "ALL");
    for cap in &added {
        // The container starts with them, so containerd's seccomp profile allows what they allow.
        flags.push("--cap-add".into());
        flags.push(format!("CAP_{cap}"));
    }
    // What runc does with runAsUser, the capability lists and allowPrivilegeEscalation: ctr 1.6
    // cannot, so setpriv does it as the container's first process, then execs the command.
    let uid = sc.run_as_user.or(pod_sc.run_as_user).unwrap_or(0);
    let gid = sc.run_as_group.or(pod_sc.run_as_group).unwrap_or(0);
    let mut bounding: Vec<String> =
        if drop_all { Vec::new() } else { DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect() };
    bounding.extend(added.iter().cloned());
    let bounding = std::iter::once("-all".to_owned())
        .chain(bounding.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut prefix = vec![
        "/bin/setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set={bounding}"),
    ];
    if sc.allow_privilege_escalation == Some(false) {
        prefix.push("--no-new-privs".into());
    }
    prefix.push("--".into());
    Translated { flags, prefix, env }
}

fn span_profiles(server: u16, service: &str) -> Vec<String> {
    let r = http().get(format!("http://127.0.0.1:{server}/api/v1/profiles?service={service}&limit=50")).send().unwrap();
    let v: Value = r.json().unwrap_or(Value::Null);
    v["profiles"]
        .as_array()
        .or(v["items"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p["profile_id"].as_str().map(str::to_owned))
        .collect()
}

fn folded_profile(server: u16, id: &str) -> String {
    http()
        .get(format!("http://127.0.0.1:{server}/api/v1/profiles/{id}?format=folded"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

fn label_values(server: u16, name: &str) -> Vec<String> {
    let v: Value =
        http().get(format!("http://127.0.0.1:{server}/api/v1/labels/{name}/values")).send().unwrap().json().unwrap();
    v["values"].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect()
}

/// The tests share two cores and the sampler's metrics port: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The demo as a non-root app and the sampler as the webhook configures it for `mode`.
fn sampler_in_containers(mode: &str, seccomp: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ctd = Containerd::start();
    let data = tempfile::tempdir().unwrap();
    let server_port = free_port();
    let _server = start_server(server_port, data.path());
    let pod = injected_pod(server_port, free_port(), mode, seccomp);
    let spec = pod.spec.as_ref().unwrap();
    let app = spec.containers.iter().find(|c| c.name == "demo").unwrap();
    let sampler = spec.init_containers.iter().flatten().find(|c| c.name == SIDECAR_NAME).expect("the sampler");

    // Volumes: emptyDirs are host directories of mode 0777, as the kubelet makes them.
    let work = tempfile::tempdir().unwrap();
    let mut volumes = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        assert!(v.empty_dir.is_some(), "only emptyDir volumes are expected, got {v:?}");
        let dir = work.path().join("volumes").join(&v.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        volumes.insert(v.name.clone(), dir);
    }
    assert!(volumes.contains_key(VOLUME_NAME));

    // Images: the demo with glibc's debug files (as an image with libc6-dbg), the sampler
    // without; both with setpriv, standing in for runc's user and capability handling.
    let setpriv = PathBuf::from("/usr/bin/setpriv");
    let (debug_src, debug_dst) = libc_debug_file();
    let app_root = work.path().join("app-rootfs");
    rootfs(
        &app_root,
        &[
            (PathBuf::from(env!("CARGO_BIN_EXE_e2e-demo")), "/bin/demo"),
            (setpriv.clone(), "/bin/setpriv"),
            (debug_src, &debug_dst),
        ],
    );
    let sampler_root = work.path().join("sampler-rootfs");
    rootfs(
        &sampler_root,
        &[(PathBuf::from(env!("CARGO_BIN_EXE_e2e-sampler")), "/bin/sampler"), (setpriv, "/bin/setpriv")],
    );
    let pause_root = work.path().join("pause-rootfs");
    rootfs(&pause_root, &[(PathBuf::from("/bin/sleep"), "/bin/sleep")]);

    let id = |c: &str| format!("{mode}-{c}-{}", std::process::id());
    ctd.run(&id("pause"), &pause_root, &[], &["/bin/sleep".into(), "100000".into()]);
    let pause_pid = ctd.pid(&id("pause")).expect("pause runs");

    // The sampler's metrics port, which the webhook picked, is already taken on the (host)
    // network: it must sample all the same.
    let sampler_c = translate(&pod, sampler, &volumes, pause_pid);
    let listen = sampler_c.env.get("SPANPROF_SIDECAR_LISTEN").expect("the webhook sets the metrics address").clone();
    assert_eq!(listen, "0.0.0.0:4042", "4041 is the app's port");
    let _taken = std::net::TcpListener::bind(&listen).expect("take the sampler's metrics port first");

    // A native sidecar starts before the app.
    let mut args = sampler_c.prefix.clone();
    args.push("/bin/sampler".into());
    ctd.run(&id("sampler"), &sampler_root, &sampler_c.flags, &args);
    let app_c = translate(&pod, app, &volumes, pause_pid);
    let mut args = app_c.prefix.clone();
    args.push("/bin/demo".into());
    ctd.run(&id("app"), &app_root, &app_c.flags, &args);

    // The app really runs as the pod's non-root user.
    std::thread::sleep(Duration::from_millis(500));
    let app_pid = ctd.pid(&id("app")).unwrap_or_else(|| panic!("the app runs: {}", ctd.log(&id("app"))));
    let status = std::fs::read_to_string(format!("/proc/{app_pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t1000\t")), "{status}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut with_demo_functions, mut containers) = (None, Vec::new());
    while Instant::now() < deadline {
        assert!(ctd.pid(&id("sampler")).is_some(), "the sampler exited:\n{}", ctd.log(&id("sampler")));
        containers = label_values(server_port, "container");
        let ids = span_profiles(server_port, "ride");
        with_demo_functions =
            ids.iter().map(|i| folded_profile(server_port, i)).find(|f| f.contains("spanprof_demo::"));
        if with_demo_functions.is_some() && containers.iter().any(|c| c == "demo") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let sampler_log = ctd.log(&id("sampler"));
    let folded = with_demo_functions
        .unwrap_or_else(|| panic!("no span profile with the demo's functions; sampler log:\n{sampler_log}"));
    assert!(containers.iter().any(|c| c == "demo"), "container label {containers:?}; sampler log:\n{sampler_log}");
    assert!(
        sampler_log.contains(&listen) && sampler_log.contains("sampling goes on"),
        "the taken port is reported:\n{sampler_log}"
    );
    // Shared-library frames are named from the app image's debug files. Samples outside spans
    // come in with later uploads on a busy machine: wait for a stack through glibc's thread start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stacks = loop {
        let whole = process_folded(server_port, "ride");
        let stacks: String = whole.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("\n");
        if stacks.contains("start_thread") || stacks.contains("clone3") || Instant::now() >= deadline {
            break stacks;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!stacks.contains("libc.so.6+0x"), "unnamed libc frames:\n{}", &stacks[..stacks.len().min(4000)]);
    assert!(
        stacks.contains("start_thread") || stacks.contains("clone3"),
        "glibc's thread start is named:\n{}",
        &stacks[..stacks.len().min(4000)]
    );
    assert!(folded.lines().count() > 0);
}

#[test]
fn the_sampler_in_perfmon_mode_under_runtime_default_seccomp() {
    sampler_in_containers("perfmon", true);
}

#[test]
fn the_sampler_in_none_mode_as_the_apps_user() {
    sampler_in_containers("none", false);
}
