"""PhysioNet credentials for the credentialed downloads (MIMIC-CXR, MIMIC-CXR-JPG, VinDr-CXR)."""

from __future__ import annotations

import os

import dagster as dg

from medvec.settings import Settings, env_var


class PhysioNetResource(dg.ConfigurableResource):
    """The PhysioNet account `medvec fetch` uses, as HTTP basic auth like `wget --user`. Both values go in
    as `EnvVar`s: Dagster keeps resource values in every run's snapshot, where the variable's name is
    harmless and a password is not. Unset, the credentialed downloads stop and say which variables to set."""

    username: str | None = None
    password: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "PhysioNetResource":
        user_var = env_var("physionet_username")
        exported_user = settings.physionet_username is not None and \
            os.environ.get(user_var) == settings.physionet_username
        return cls(username=dg.EnvVar(user_var) if exported_user else None,
                   password=dg.EnvVar(env_var("physionet_password"))
                   if settings.exported("physionet_password") else None)
