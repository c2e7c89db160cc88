"""The toolkits every stage and plugin may use (plugins through ftctl.api). They import only the
contract (kinds, records, errors) and each other; docs/architecture.md lists them."""
