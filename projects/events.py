"""What the projects layer announces; the layers above subscribe in their `AppConfig.ready()`.

Django signals, sent synchronously: a receiver runs in the sender's transaction,
so one that writes rows (annotation's receiver of `examples_imported`) commits or
rolls back with the import, and one that queues work wraps it in
`transaction.on_commit` itself.
"""
from django.dispatch import Signal

# A new taxonomy version was made. kwargs: project, version, retrain_reason (str, "" when the
# change does not touch what the model learns: a rename, a colour, a shortcut).
taxonomy_changed = Signal()

# Rows of an import were inserted, inside the import's transaction. kwargs: dataset, taxonomy,
# labels ({example id: [label key, ...]} for the rows that came with labels), annotator; span projects
# also spans ({example id: [{"start", "end", "label": key}, ...]}).
examples_imported = Signal()

# An import ended, done or failed (sent once per import, after its transaction). kwargs: dataset.
dataset_imported = Signal()
