"""The OCI registry side of image-cloner: references, the registry client and the copy engine.

Knows nothing of Kubernetes. Callers import from the module that holds a name
(`oci.copying.Copier`, `oci.errors.RegistryError`): the package itself imports nothing,
so `oci.references` and `oci.options` (pure, stdlib-only) never pull in aiohttp, which
costs about 0.4 s of every `image-cloner --help` (see docs/benchmarks.md).
"""
