"""Deployment: a registered model version exported to Triton (python backend here, FIL in the cluster image)."""

from pipelines.deploy.triton import (
    DeployedModel,
    deploy_registered,
    export_fil_model,
    export_python_model,
    fil_model_config,
    load_on_triton,
    triton_python_config,
)

__all__ = ["DeployedModel", "deploy_registered", "export_fil_model", "export_python_model", "fil_model_config", "load_on_triton",
           "triton_python_config"]
