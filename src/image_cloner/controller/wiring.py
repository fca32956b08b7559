"""How `run` and `plan` reach registries: the same logins, options and credential chain.

The backup registry's push login comes from values or files (`credentials.WatchedLogin`)
or from a credential provider plugin (`credential_plugins.PluginLogin`, run once here
before anything is checked); the registry options read it at each request; source
images are read with the login each workload proved (`controller.access`). Kept apart
from `controller.app` so that `plan` builds exactly these parts without loading kopf.
"""

from __future__ import annotations

import dataclasses
import logging

from image_cloner.controller.access import SourceAccess
from image_cloner.controller.kube import Kube
from image_cloner.controller.source_secrets import SecretReader
from image_cloner.credential_plugins import PluginLogin, PluginProvider
from image_cloner.credentials import BackupCredentials, LiveLogin
from image_cloner.logs import CONTROLLER_LOGGER, Redactor, log_event
from image_cloner.oci.copying import Copier
from image_cloner.oci.options import RegistryOptions
from image_cloner.settings import Settings
from image_cloner.source_credentials import AuthFile, CredentialProvider, SourceLogins

__all__ = ["live_options", "plugin_login", "source_access"]

logger = logging.getLogger(CONTROLLER_LOGGER)


async def plugin_login(
    settings: Settings, plugins: PluginProvider | None, redactor: Redactor | None = None
) -> PluginLogin | None:
    """The push login from `IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER`, run once before the
    backup registry is checked; None when the login is not a plugin's."""
    spec = settings.backup_login_plugin
    if spec is None or plugins is None:
        return None
    login = PluginLogin(plugins, spec, str(settings.backup))
    await login.renew()
    if login.current is None:
        log_event(
            logger,
            logging.ERROR,
            "no push login yet: the credential provider gave none, it is run again with backoff",
            provider=spec.name,
        )
    else:
        if redactor is not None:
            redactor.add(login.current.password)
        log_event(
            logger,
            logging.INFO,
            "push login from credential provider",
            provider=spec.name,
            username=login.current.username,
        )
    return login


def live_options(settings: Settings, push: LiveLogin | None) -> RegistryOptions:
    """The registry options, with the backup host's login read from `push` at each request,
    and each copy's source login the one proven for its workload (`SourceLogins`)."""
    options = settings.registry_options
    credentials = options.credentials
    if push is not None:
        credentials = BackupCredentials(credentials, host=settings.backup.registry.host, login=push)
    return dataclasses.replace(options, credentials=SourceLogins(credentials))


def source_access(
    settings: Settings, kube: Kube, copier: Copier, plugins: PluginProvider | None
) -> SourceAccess:
    """The credential chain of docs/private-images.md, in the kubelet's order."""
    controller_wide: list[CredentialProvider] = []
    if settings.source_auth_file is not None:
        controller_wide.append(AuthFile(settings.source_auth_file))
    if plugins is not None:
        controller_wide.append(plugins)
    secrets = SecretReader(kube) if settings.read_pull_secrets else None
    return SourceAccess(probe=copier, controller_wide=controller_wide, secrets=secrets)
