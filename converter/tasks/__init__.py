"""Task adapters: what differs between converting a classifier, a detector or a plain tensor model."""

# The names `edgegap convert --task` takes; "auto" picks one from the model itself.
TASK_NAMES: tuple[str, ...] = ("auto", "classification", "tensor", "detection")
