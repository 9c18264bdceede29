"""Refreshing a deployed detector from what the devices saw: relabel, fine-tune, gate, publish."""
