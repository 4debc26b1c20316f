"""What the learning layer announces; the serving layer subscribes in its `AppConfig.ready()`."""
from django.dispatch import Signal

# A training run recorded a new model version (committed). kwargs: version.
model_version_recorded = Signal()

# A model version's quality report landed (its cross-validated figures and calibration). kwargs: version.
model_version_reported = Signal()

# A version now serves (promotion, rollback or automatic), sent by the serving layer inside its transaction: the
# fast loop follows that version's encoder (learning.finetuning.version_promoted). kwargs: version.
model_version_promoted = Signal()
