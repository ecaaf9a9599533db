"""A real Kubernetes node beside a running platform: containerd, CNI, kubelet and friends.

``stack node up`` adds to a platform started by ``stack up`` (or a test's throwaway one)
kube-controller-manager, kube-scheduler, containerd with its CRI plugin, a bridge CNI
network, kubelet, kube-proxy and CoreDNS, so the chart's Pods really run. Every daemon is
started and stopped by pid, its state under ``<state dir>/node``. What it changes on the
machine (one bridge, iptables rules, three kernel sysctls kubelet sets) is undone by
``stack node down``. One node per machine: the bridge name and pod range are fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fintech_devstack import build, certs, images, platform, ports, versions

NODE_NAME = "fintech-node"
BRIDGE = "fintech0"
POD_CIDR = "10.244.0.0/24"
# The bridge's own address: the node's address as pods see it.
NODE_IP = "10.244.0.1"
CLUSTER_DNS_IP = "10.0.0.10"
SERVICE_CIDR = "10.0.0.0/24"
CNI_BIN_DIR = Path("/usr/lib/cni")
# kubelet sets these when it starts (its "kernel defaults"); `node down` puts them back.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
READY_TIMEOUT_SECONDS = 240
STORAGE_CLASS = "fintech-node-local"
# Static volumes for the StatefulSets' claims: the chart's two, a second release's, spares.
VOLUME_COUNT = 6
VOLUME_SIZE = "20Gi"
COREDNS_READY_TIMEOUT_SECONDS = 180
COMMAND_TIMEOUT_SECONDS = 120
DAEMONS = ("containerd", "controller-manager", "scheduler", "kubelet", "kube-proxy")


class NodeError(platform.PlatformError):
    """The node could not start; the message names the part and its log."""


def _say(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], *, check: bool = True, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        cmd, input=stdin, capture_output=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
    )
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(cmd[:4])} failed: {result.stderr.decode().strip()[-600:]}")
    return result.stdout.decode()


@dataclass(frozen=True)
class KubeBinaries:
    """The node's executables beyond the platform's own."""

    controller_manager: Path
    scheduler: Path
    kubelet: Path
    kube_proxy: Path


class Node:
    """The node of one platform state directory."""

    def __init__(self, plat: platform.Platform):
        self.plat = plat
        self.home = plat.state_dir / "node"
        self.logs = plat.state_dir / "logs"
        self.state_file = self.home / "node.json"
        # Our own children, kept so they are reaped (and never warned about) when stopped.
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ---- paths --------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.home / "containerd" / "containerd.sock"

    def _kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        kubectl = build.cache_root() / f"kubernetes-v{versions.KUBERNETES_VERSION}"
        cmd = [str(kubectl / "bin" / "kubectl"), f"--kubeconfig={self.plat.kubeconfig}", *args]
        return _run(cmd, check=check, stdin=stdin.encode() if stdin else None)

    def ctr(self, *args: str) -> list[str]:
        """A ``ctr`` command line on this node's containerd, namespace k8s.io."""
        return ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args]

    # ---- state --------------------------------------------------------------------------

    def _load(self) -> dict[str, object]:
        if not self.state_file.exists():
            return {}
        data: dict[str, object] = json.loads(self.state_file.read_text())
        return data

    def _save(self, data: dict[str, object]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(data, indent=2))

    def _pids(self) -> dict[str, int]:
        pids = self._load().get("pids", {})
        return dict(pids) if isinstance(pids, dict) else {}

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = self.logs / f"node-{name}.log"
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        self.procs[name] = proc
        data = self._load()
        data["pids"] = {**self._pids(), name: proc.pid}
        self._save(data)
        return proc

    # ---- lifecycle ----------------------------------------------------------------------

    def status(self) -> dict[str, str]:
        """Each daemon's liveness, and the Node's Ready condition."""
        pids = self._pids()
        marker = str(self.plat.state_dir)
        result = {
            name: "running" if platform._alive(pids.get(name, 0), marker) else "stopped"
            for name in DAEMONS
        }
        ready = ""
        if result["kubelet"] == "running":
            jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
            ready = self._kubectl(
                "get", "node", NODE_NAME, "-o", f"jsonpath={jsonpath}", check=False
            ).strip()
        result["node"] = "Ready" if ready == "True" else "NotReady"
        return result

    def up(self, image_tars: list[Path]) -> None:
        """Start every part (idempotent: a running node is stopped first), load the images."""
        if not self.plat.kubeconfig.exists():
            raise NodeError("no platform here; run: fintech-operator stack up")
        kube = ensure_binaries()
        self.down()
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._save({"pids": {}, "sysctls": _read_sysctls()})
        try:
            self._network_up()
            self._start_containerd()
            for tar in image_tars:
                _say(f"loading {tar.name} into containerd")
                _run([*self.ctr("images", "import", "--no-unpack", str(tar))])
            self._start_control_plane(kube)
            self._start_kubelet(kube)
            self._start_kube_proxy(kube)
            self._start_coredns()
            self._make_volumes()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every pod and daemon, unmount, undo the network changes and the sysctls."""
        data = self._load()
        marker = str(self.plat.state_dir)
        pids = self._pids()
        for name in ("kubelet", "kube-proxy", "scheduler", "controller-manager"):
            platform._terminate(name, pids.get(name, 0), marker)
        if platform._alive(pids.get("containerd", 0), marker):
            self._remove_all_pods()
        platform._terminate("containerd", pids.get("containerd", 0), marker)
        _stop_shims(str(self.socket))
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=platform.STOP_TIMEOUT_SECONDS)
        self.procs = {}
        _unmount_under(self.home)
        if data:
            self._network_down()
            _restore_sysctls(data.get("sysctls"))
            self._save({"pids": {}})

    # ---- network ------------------------------------------------------------------------

    def _network_up(self) -> None:
        """The bridge with the node's address, forwarding allowed on it, and the API server
        (loopback only) reachable from pods at the `kubernetes` Service's address."""
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # Packets from pods may be sent to 127.0.0.1 only with route_localnet on the bridge.
        Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").write_text("1\n")
        for rule in self._iptables_rules():
            table, chain, spec = rule[0], rule[1], rule[2:]
            exists = ["iptables", "-t", table, "-C", chain, *spec]
            if subprocess.run(exists, capture_output=True, check=False).returncode != 0:
                _run(["iptables", "-t", table, "-I", chain, "1", *spec])

    def _iptables_rules(self) -> list[list[str]]:
        api = f"127.0.0.1:{self.plat.ports.apiserver}"
        comment = ["-m", "comment", "--comment", f"fintech-node {self.plat.state_dir}"]
        service = ["-d", certs.KUBERNETES_SERVICE_IP, "-p", "tcp", "--dport", "443"]
        return [
            ["filter", "FORWARD", "-i", BRIDGE, "-j", "ACCEPT", *comment],
            ["filter", "FORWARD", "-o", BRIDGE, "-j", "ACCEPT", *comment],
            ["nat", "PREROUTING", "-s", POD_CIDR, *service, "-j", "DNAT", "--to", api, *comment],
            # Replies from a loopback source leave for the bridge only after SNAT to its address.
            ["nat", "POSTROUTING", "-s", "127.0.0.1", "-o", BRIDGE, "-j", "MASQUERADE", *comment],
        ]

    def _network_down(self) -> None:
        for table, chain, *spec in self._iptables_rules():
            _run(["iptables", "-t", table, "-D", chain, *spec], check=False)
        kube = build.cache_root() / f"kubernetes-v{versions.KUBERNETES_VERSION}" / "bin"
        if (kube / "kube-proxy").exists():
            _run([str(kube / "kube-proxy"), "--cleanup"], check=False)
        # kubelet's own chains: it adds them at start and never removes them.
        for chain in ("INPUT", "OUTPUT"):
            _run(["iptables", "-D", chain, "-j", "KUBE-FIREWALL"], check=False)
        _run(["iptables", "-F", "KUBE-FIREWALL"], check=False)
        _run(["iptables", "-X", "KUBE-FIREWALL"], check=False)
        for table in ("filter", "nat", "mangle"):
            _run(["iptables", "-t", table, "-X", "KUBE-KUBELET-CANARY"], check=False)
        _run(["iptables", "-t", "mangle", "-X", "KUBE-IPTABLES-HINT"], check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "delete", BRIDGE], check=False)
        for veth in Path("/sys/class/net").glob("veth*"):
            master = veth / "master"
            if master.exists() and master.resolve().name == BRIDGE:
                _run(["ip", "link", "delete", veth.name], check=False)
        shutil.rmtree("/var/lib/cni/networks/fintech-pods", ignore_errors=True)

    # ---- containerd ---------------------------------------------------------------------

    def _start_containerd(self) -> None:
        home = self.home / "containerd"
        (home / "net.d").mkdir(parents=True, exist_ok=True)
        (home / "net.d" / "10-fintech.conflist").write_text(json.dumps(_cni_config(), indent=2))
        config = home / "config.toml"
        config.write_text(_containerd_config(home, images.pause_image()))
        _say(f"starting containerd on {self.socket}")
        proc = self._spawn("containerd", ["containerd", f"--config={config}"])
        platform._wait(
            "containerd",
            self.logs / "node-containerd.log",
            lambda: (
                subprocess.run(
                    self.ctr("version"), capture_output=True, check=False, timeout=10
                ).returncode
                == 0
            ),
            60,
            proc,
        )

    def _remove_all_pods(self) -> None:
        for task in _run(self.ctr("tasks", "ls", "-q"), check=False).split():
            _run(self.ctr("tasks", "kill", "-s", "SIGKILL", task), check=False)
        time.sleep(1)
        for task in _run(self.ctr("tasks", "ls", "-q"), check=False).split():
            _run(self.ctr("tasks", "delete", "-f", task), check=False)

    # ---- Kubernetes daemons -------------------------------------------------------------

    def _start_control_plane(self, kube: KubeBinaries) -> None:
        pki = self.plat.state_dir / "pki"
        kubeconfig = f"--kubeconfig={self.plat.kubeconfig}"
        free = ports.Ports.free()
        _say("starting kube-controller-manager and kube-scheduler")
        self._spawn(
            "controller-manager",
            [
                str(kube.controller_manager),
                kubeconfig,
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--controllers={self._controllers()}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free.etcd_client}",
                f"--cert-dir={self.home / 'controller-manager'}",
            ],
        )
        self._spawn(
            "scheduler",
            [
                str(kube.scheduler),
                kubeconfig,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free.etcd_peer}",
                f"--cert-dir={self.home / 'scheduler'}",
            ],
        )

    def _controllers(self) -> str:
        """Every controller, less the two the platform's own controller-manager runs (a
        platform started before it had one, or without, leaves them all to the node's)."""
        if self.plat.status().get("controller-manager") != "running":
            return "*"
        return "*," + ",".join(f"-{name}" for name in platform.PLATFORM_CONTROLLERS)

    def _start_kubelet(self, kube: KubeBinaries) -> None:
        home = self.home / "kubelet"
        home.mkdir(parents=True, exist_ok=True)
        (home / "resolv.conf").write_text("")
        config = home / "config.json"
        free = ports.Ports.free()
        config.write_text(
            json.dumps(
                _kubelet_config(home, self.socket, self.plat.state_dir / "pki" / "ca.crt", free),
                indent=2,
            )
        )
        _say(f"starting kubelet as node {NODE_NAME}")
        proc = self._spawn(
            "kubelet",
            [
                str(kube.kubelet),
                f"--config={config}",
                f"--kubeconfig={self.plat.kubeconfig}",
                f"--root-dir={home / 'root'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        platform._wait(
            "kubelet (Node Ready)",
            self.logs / "node-kubelet.log",
            lambda: self.status()["node"] == "Ready",
            READY_TIMEOUT_SECONDS,
            proc,
        )

    def _start_kube_proxy(self, kube: KubeBinaries) -> None:
        config = self.home / "kube-proxy.json"
        free = ports.Ports.free()
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self.plat.kubeconfig)},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "bindAddress": "127.0.0.1",
                    "healthzBindAddress": f"127.0.0.1:{free.etcd_client}",
                    "metricsBindAddress": f"127.0.0.1:{free.etcd_peer}",
                    # Zero: kube-proxy leaves the machine's conntrack sysctls alone.
                    "conntrack": {"maxPerCore": 0, "min": 0},
                    "iptables": {"localhostNodePorts": False, "masqueradeAll": True},
                },
                indent=2,
            )
        )
        _say("starting kube-proxy")
        self._spawn("kube-proxy", [str(kube.kube_proxy), f"--config={config}"])

    def _start_coredns(self) -> None:
        _say(f"starting CoreDNS (kube-dns at {CLUSTER_DNS_IP})")
        manifest = _coredns_manifest(images.coredns_image())
        self._kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        self._kubectl(
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            f"--timeout={COREDNS_READY_TIMEOUT_SECONDS}s",
        )

    def _make_volumes(self) -> None:
        """The default StorageClass and hostPath volumes under the node's directory for the
        StatefulSets' claims (static: no provisioner runs). Writable by every user: the
        hostPath type gets no fsGroup ownership change, and the images' users differ."""
        items: list[dict[str, object]] = [_storage_class()]
        for index in range(VOLUME_COUNT):
            path = self.home / "volumes" / f"pv{index}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            items.append(_volume(f"fintech-node-pv{index}", path))
        manifest = {"apiVersion": "v1", "kind": "List", "items": items}
        self._kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def _storage_class() -> dict[str, object]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }


def _volume(name: str, path: Path) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": VOLUME_SIZE},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "Directory"},
        },
    }


def ensure_binaries() -> KubeBinaries:
    """The node's Kubernetes executables, built from the pinned release when missing."""
    names = ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]
    return KubeBinaries(*build.ensure_kubernetes_commands(names))


# ---- configuration documents ------------------------------------------------------------


def _cni_config() -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "fintech-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                # A pod reaching itself through a Service (Kafka does) needs hairpin.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _containerd_config(home: Path, pause_image: str) -> str:
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""version = 2
root = "{home / "root"}"
state = "{home / "state"}"

[grpc]
  address = "{home / "containerd.sock"}"

{cri}
  sandbox_image = "{pause_image}"
  # Processes here lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj otherwise.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{home / "net.d"}"
"""


def _kubelet_config(home: Path, socket: Path, ca: Path, free: ports.Ports) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket}",
        # Served on the bridge only: the API server (logs, exec) reaches it there.
        "address": NODE_IP,
        "port": free.etcd_client,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free.etcd_peer,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": str(home / "resolv.conf"),
        "podLogsDir": str(home / "pod-logs"),
        "failSwapOn": False,
        # Images cannot be pulled here: never garbage-collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%"},
        "serializeImagePulls": False,
        "maxPods": 40,
    }


def _coredns_manifest(image: str) -> dict[str, object]:
    corefile = (
        ".:1053 {\n    errors\n    health :8080\n    ready :8181\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
        "        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }\n"
        "    cache 30\n    loop\n}\n"
    )
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "fintech:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["services", "pods", "namespaces", "endpoints"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "fintech:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "fintech:coredns",
                },
                "subjects": [{"kind": "ServiceAccount", **meta}],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta,
                "data": {"Corefile": corefile},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": "coredns",
                            "dnsPolicy": "Default",
                            "containers": [
                                {
                                    "name": "coredns",
                                    "image": image,
                                    "imagePullPolicy": "Never",
                                    "args": ["-conf", "/etc/coredns/Corefile"],
                                    "ports": [
                                        {"containerPort": 1053, "protocol": "UDP"},
                                        {"containerPort": 1053, "protocol": "TCP"},
                                    ],
                                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
                                    "volumeMounts": [
                                        {"name": "config", "mountPath": "/etc/coredns"}
                                    ],
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {**meta, "name": "kube-dns", "labels": labels},
                "spec": {
                    "clusterIP": CLUSTER_DNS_IP,
                    "selector": labels,
                    "ports": [
                        {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                    ],
                },
            },
        ],
    }


# ---- machine helpers --------------------------------------------------------------------


def _read_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text().strip() for name in KUBELET_SYSCTLS}


def _restore_sysctls(saved: object) -> None:
    if not isinstance(saved, dict):
        return
    for name, value in saved.items():
        if name in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                Path("/proc/sys", name).write_text(f"{value}\n")


def _stop_shims(address: str) -> None:
    """containerd's shims outlive it; ours name our socket on their command line."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "containerd-shim" in cmdline and address in cmdline:
            platform._terminate("containerd-shim", int(proc.name), address)


def _unmount_under(home: Path) -> None:
    """Volumes, overlays and network namespaces kubelet and containerd mounted there."""
    prefix = str(home.resolve())
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for target in reversed(mounts):
        if target.startswith(prefix):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def wait_for(what: str, check: object, timeout_seconds: float) -> None:
    """Poll ``check`` until true, failing with ``what`` (used by the cluster tests)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(2)
    raise NodeError(f"{what}: not within {timeout_seconds:.0f}s")


def machine_ready() -> list[str]:
    """What this machine lacks to run a node (empty: nothing), in words."""
    missing = [
        tool for tool in ("containerd", "ctr", "runc", "iptables", "ip") if not shutil.which(tool)
    ]
    missing += [
        f"CNI plugin {p}"
        for p in ("bridge", "portmap", "loopback", "host-local")
        if not (CNI_BIN_DIR / p).exists()
    ]
    if os.geteuid() != 0:
        missing.append("root (containerd and kubelet need it)")
    return missing


if __name__ == "__main__":
    # `make cluster-test` builds what the node runs before its tests start: a cold cache takes
    # longer than the tests' per-test timeout, which would otherwise fail the first test.
    print(ensure_binaries())
    for role, reference in images.all_images().items():
        print(f"{role:10} {reference}")
