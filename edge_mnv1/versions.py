"""The versions of the two contracts between the compiler and the device side, in one place
that both import (neither may import the other): the artifact format and the protocol."""

ARTIFACT_FORMAT_VERSION = 1  # manifest.json and the files it lists
PROTOCOL_VERSION = 2         # docs/protocol.md; the C side is EM_PROTOCOL_VERSION
