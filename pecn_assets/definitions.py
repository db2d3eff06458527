"""The one `Definitions` of PECN (workspace.yaml, `dagster dev`, the Kubernetes code location): the
deployment is read from the environment once (`pecn_ml.deployment`) and built by `pecn_assets.build`."""

import os

from pecn_assets.build import build_definitions
from pecn_ml.deployment import Deployment

defs = build_definitions(Deployment.from_env(os.environ))
