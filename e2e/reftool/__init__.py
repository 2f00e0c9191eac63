"""The project's own upstream-reference tooling: renders upstream Istio charts into digests
(generate), normalises manifests (normalise), compares digests field by field (compare) and
holds the `render` CLI to them (parity). Standard library plus PyYAML only."""
