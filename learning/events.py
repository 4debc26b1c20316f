"""What the learning layer announces; the serving layer subscribes in its `AppConfig.ready()`."""
from django.dispatch import Signal

# A training run recorded a new model version (committed). kwargs: version.
model_version_recorded = Signal()

# A model version's quality report landed (its cross-validated figures and calibration). kwargs: version.
model_version_reported = Signal()
