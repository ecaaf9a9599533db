"""Every pinned version of the local platform, in one place.

Changing a version here is the only way to rebuild a cached component: the cache
directories are keyed by these strings, so a bump builds once and old builds stay
until ``stack clean`` removes them.
"""

from __future__ import annotations

from typing import Final

# Kubernetes is built from the k8s.io/kubernetes module; its staging modules are
# published as v0.<minor>.<patch>, which the wrapper module pins with replace lines.
KUBERNETES_VERSION: Final = "1.37.2"
KUBERNETES_STAGING_VERSION: Final = "0.37.2"

# etcd 3.6 is the line kube-apiserver 1.37 is tested against.
ETCD_VERSION: Final = "3.6.16"

# Helm v3: the chart API our chart is written for (apiVersion v2 charts).
HELM_VERSION: Final = "3.22.0"

# Apache Kafka in KRaft mode, from its Maven Central jars (Scala 2.13 build).
KAFKA_VERSION: Final = "4.4.0"
KAFKA_SCALA_VERSION: Final = "2.13"
LOG4J_VERSION: Final = "2.26.1"

# PostgreSQL comes from the distribution's packages; this is the major version we
# install when none is present, and the lowest we accept.
POSTGRES_MAJOR: Final = 15

# CoreDNS, the node's cluster DNS, built from its Go module (stack node).
COREDNS_VERSION: Final = "1.14.7"
