"""`folio bench`: training and sampling speed, measured side by side on this machine."""
