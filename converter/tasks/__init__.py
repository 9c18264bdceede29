"""Task adapters: what differs between converting a classifier, a detector or a plain tensor model."""
