"""Baseline explanation methods scored beside trained heads: the Grad-CAM family (grad-cam package) and RISE."""
