"""The controller: the only package that knows kopf and the Kubernetes API.

`app.run` wires kopf's watch streams (`handlers`) to our level-triggered work queue
(`queue`), whose worker reconciles one workload at a time (`reconcile`) through the
Kubernetes calls in `kube` and the copy engine in `image_cloner.oci`.
"""

__all__: list[str] = []
