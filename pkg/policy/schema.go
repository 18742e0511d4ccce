package policy

import _ "embed"

// Schema is the JSON Schema (draft 2020-12) of the policy format, for
// editors (yaml-language-server: `# yaml-language-server: $schema=...`).
// It checks the shape of a policy; Parse checks more (conflicts, duplicate
// names, remap agreement) and is the authority.
//
//go:embed schema.json
var Schema []byte
