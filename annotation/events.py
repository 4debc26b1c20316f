"""What the annotation layer announces; the layers above subscribe in their `AppConfig.ready()`."""
from django.dispatch import Signal

# People gave labels and they are committed. kwargs: project, example_ids.
labels_given = Signal()

# Examples were deleted (Examples page: a selection, or a dataset with its examples), sent inside the
# deleting transaction. kwargs: project, example_ids (list[int]), reason (str, e.g. "37 examples deleted").
examples_deleted = Signal()
