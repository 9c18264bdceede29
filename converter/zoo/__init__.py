"""The model zoo: a reference SSD detector and the synthetic detection data it is trained on,
and a small digits CNN (digits.py) for the demo, tests and the conversion benchmark."""
