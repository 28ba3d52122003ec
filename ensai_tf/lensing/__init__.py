"""lensing subpackage."""
