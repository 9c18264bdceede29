"""Geometry the agent and the converter share: the letterbox transform (letterbox), SSD anchors
(anchors), and box coding, IoU and NMS (boxes). The converter imports these; never the reverse."""
