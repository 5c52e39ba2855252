"""Queue workers on Kubernetes: their Deployment and the KEDA ``ScaledObject`` that scales it.

Kept apart from :mod:`modelyard.deploy.k8s` (the rest of the manifests) because the two
halves must agree on one thing only, the stream and consumer group, and that is what the
function below is about.
"""

from __future__ import annotations

from modelyard.deploy import k8s_objects as ko
from modelyard.deploy.k8s_objects import REDIS_SECRET, Doc, label_value
from modelyard.deploy.spec import Queue


def queue_worker(
    service: str,
    endpoint_key: str,
    name: str,
    namespace: str | None,
    image: str,
    queue: Queue,
    replica_env: list[Doc],
) -> list[Doc]:
    """Queue-worker Deployment and its KEDA ScaledObject (the consumer group's lag).

    The worker's ``--stream``/``--group`` and the trigger's ``stream``/``consumerGroup`` come
    from the same two values: KEDA must measure the group the workers read with, or it scales
    on a group nobody consumes (whose lag only grows). Until the first worker has created the
    group, the pending-entries trigger can only report ``NOGROUP``; the lag trigger reads the
    stream's length then and wakes that worker (an HPA scales up on the metrics it can read).
    """
    labels = {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/component": "queue-worker",
        "modelyard.io/service": label_value(service),
        "modelyard.io/worker": label_value(name),
    }
    env = [
        *replica_env,
        ko.secret_env("MODELYARD_REDIS_URL", REDIS_SECRET, "url"),
        # KEDA reads the scaler's connection from the target container's environment.
        ko.secret_env("REDIS_ADDRESS", REDIS_SECRET, "address"),
        ko.secret_env("REDIS_PASSWORD", REDIS_SECRET, "password", optional=True),
    ]
    args = [
        "queue-worker",
        "--service",
        service,
        "--endpoint",
        endpoint_key,
        "--stream",
        queue.stream,
        "--group",
        queue.consumer_group,
        "--batch-size",
        str(queue.batch_size),
    ]
    container = ko.container("queue-worker", image, args, env, ko.resources(None, None, 0))
    volumes, mounts = ko.home_volume()
    container["volumeMounts"] = mounts
    pod = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"fsGroup": 1000},
        "terminationGracePeriodSeconds": 60,
    }
    deployment = ko.deployment(name, namespace, labels, pod, None)
    connection = {
        "addressFromEnv": "REDIS_ADDRESS",
        "passwordFromEnv": "REDIS_PASSWORD",
        "stream": queue.stream,
        "consumerGroup": queue.consumer_group,
    }
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ko.meta(name, namespace, labels),
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": queue.min_replicas,
            "maxReplicaCount": queue.max_replicas,
            "pollingInterval": 5,
            "cooldownPeriod": 120,
            "triggers": [
                {
                    # Entries no worker has taken yet: wakes workers from zero, adds one per
                    # lagCount waiting entries.
                    "type": "redis-streams",
                    "name": "backlog",
                    "metadata": {
                        **connection,
                        "lagCount": str(queue.lag_count),
                        "activationLagCount": str(queue.activation_lag_count),
                    },
                },
                {
                    # Entries taken but not acknowledged (XPENDING): keeps the workers that
                    # hold them (one per --batch-size entries) while the lag is already 0, and
                    # wakes one to reclaim what a stopped worker left pending.
                    "type": "redis-streams",
                    "name": "in-flight",
                    "metadata": {**connection, "pendingEntriesCount": str(queue.batch_size)},
                },
            ],
        },
    }
    return [deployment, scaled]
