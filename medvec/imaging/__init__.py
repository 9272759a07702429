"""Decoding DICOM and raster files and normalising them to 8-bit WebP."""
