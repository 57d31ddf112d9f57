"""Cryptography of the hub.

* :mod:`cmohub.crypto.envelope` — AES-256-GCM envelope encryption: data keys wrapped by a
  key-encryption key (KEK). Used by the vault (identifiers at rest) and by the encrypted raw
  clinical store.
* :mod:`cmohub.crypto.openpgp` — OpenPGP signing and encryption for CMO exchange (the only
  importer of pgpy).

Errors are :class:`cmohub.errors.CryptoError` with a ``CRYPTO_*`` code; no message ever
contains key material or plaintext.
"""
