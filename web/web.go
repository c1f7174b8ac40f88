// Package web holds mxid's embedded assets and nothing else: the templates
// of the verification email (subject, text, HTML), the verification SMS,
// the pages GET submitToken shows and the invite email (subject, text,
// HTML). Rendering them, and replacing them with
// files from the configured templates_dir, is the mail package's job.
//
// It imports no other mxid package.
package web

import "embed"

// Templates holds templates/*: each file is one template, named by its
// file name. Files ending in .html are html/template, the others
// text/template.
//
//go:embed templates
var Templates embed.FS

// TemplateDir is the directory inside Templates that holds the files.
const TemplateDir = "templates"
