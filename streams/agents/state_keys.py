"""Keys of the state records in the changelog-backed tables.

Both tables hold every partition's records, each key starting with the partition
(``"<partition>\\x1f"``):

- ``accounts``: ``<p>\\x1fparams`` and ``<p>\\x1fmarks`` (the partition's globals) and
  one record per account under ``<p>\\x1f`` + the account id. An account id is any
  non-empty string, so one named ``params`` or ``marks`` (or starting with the escape
  character ``\\x1e``) is stored as ``\\x1e`` + the id: it can never overwrite a global.
- ``seen-ids``: ``<p>\\x1f`` + the engine's key of a remembered id
  (``account\\x1ftopic\\x1fid``), the value naming its account (``margin/dedup.py``).

Records are told apart by their table, never by the shape of a key.
"""
from __future__ import annotations

SEP = "\x1f"
ESCAPE = "\x1e"
PARAMS = "params"
MARKS = "marks"
_GLOBALS = (PARAMS, MARKS)


def partition_prefix(partition: int) -> str:
    """The start of every key of ``partition``."""
    return f"{partition}{SEP}"


def account_key(partition: int, account_id: str) -> bytes:
    """The ``accounts`` table key of an account's record."""
    if account_id in _GLOBALS or account_id.startswith(ESCAPE):
        account_id = ESCAPE + account_id
    return (partition_prefix(partition) + account_id).encode()


def global_key(partition: int, name: str) -> bytes:
    """The ``accounts`` table key of a partition global (:data:`PARAMS` or :data:`MARKS`)."""
    return (partition_prefix(partition) + name).encode()


def split_accounts_table(partition: int, records: dict[bytes, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The ``accounts`` table records of ``partition`` as (globals by name, account records
    by account id); records of other partitions are left out."""
    prefix = partition_prefix(partition).encode()
    globals_: dict[str, bytes] = {}
    accounts: dict[str, bytes] = {}
    for key, value in records.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):].decode()
        if rest in _GLOBALS:
            globals_[rest] = value
        else:
            accounts[rest[1:] if rest.startswith(ESCAPE) else rest] = value
    return globals_, accounts


def seen_key(partition: int, key: str) -> bytes:
    """The ``seen-ids`` table key of a remembered id (the engine's key)."""
    return (partition_prefix(partition) + key).encode()


def split_seen_table(partition: int, records: dict[bytes, bytes]) -> list[tuple[str, str]]:
    """(engine key, value) of ``partition``'s remembered ids."""
    prefix = partition_prefix(partition).encode()
    return [(key[len(prefix):].decode(), value.decode()) for key, value in records.items() if key.startswith(prefix)]
