"""DCASE2024 submissions: the official CSV formats (``formats``), the system meta YAML (``meta``), the package layout
(``package``) and the submitted systems' recipes (``recipes``). Import from the submodules."""
