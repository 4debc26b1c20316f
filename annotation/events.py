"""What the annotation layer announces; the layers above subscribe in their `AppConfig.ready()`."""
from django.dispatch import Signal

# People gave labels and they are committed. kwargs: project, example_ids.
labels_given = Signal()
