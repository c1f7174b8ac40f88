package mail

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	texttemplate "text/template"

	"mxid/web"
)

// Template file names. A file of the same name in the configured templates
// directory replaces the embedded one.
const (
	TemplateEmailSubject  = "verify_email_subject.txt"
	TemplateEmailText     = "verify_email.txt"
	TemplateEmailHTML     = "verify_email.html"
	TemplateSMS           = "verify_sms.txt"
	TemplatePageSuccess   = "submit_token_success.html"
	TemplatePageFailure   = "submit_token_failure.html"
	TemplateInviteSubject = "invite_email_subject.txt"
	TemplateInviteText    = "invite_email.txt"
	TemplateInviteHTML    = "invite_email.html"
)

var templateNames = []string{TemplateEmailSubject, TemplateEmailText, TemplateEmailHTML, TemplateSMS, TemplatePageSuccess, TemplatePageFailure,
	TemplateInviteSubject, TemplateInviteText, TemplateInviteHTML}

// Verification is what the verification email and SMS templates see.
type Verification struct {
	Medium        string // "email" or "msisdn"
	Address       string // the address as the user gave it; for phones the international format
	Token         string // the code to enter in the client
	Link          string // GET submitToken with sid, client_secret and token (email)
	ServerName    string // the identity server's server_name
	PublicBaseURL string // where clients reach the identity server
}

// Page is what the submitToken result pages see.
type Page struct {
	ServerName string
	Message    string // what happened, for a person
}

// Templates are the parsed templates: text/template for .txt files,
// html/template (contextual escaping) for .html files.
type Templates struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

// LoadTemplates parses the embedded templates, each replaced by the file of
// the same name in dir when dir is set and holds one. A file in dir with a
// name mxid does not use is an error (a typo would otherwise be silently
// ignored).
func LoadTemplates(dir string) (*Templates, error) {
	if dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("templates_dir: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() && !slices.Contains(templateNames, e.Name()) && !strings.HasPrefix(e.Name(), ".") {
				return nil, fmt.Errorf("templates_dir: %s is not a template mxid uses (known: %s)", e.Name(), strings.Join(templateNames, ", "))
			}
		}
	}
	t := &Templates{text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	for _, name := range templateNames {
		src, from, err := readTemplate(dir, name)
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(name, ".html") {
			tmpl, err := htmltemplate.New(name).Option("missingkey=error").Parse(src)
			if err != nil {
				return nil, fmt.Errorf("template %s: %w", from, err)
			}
			t.html[name] = tmpl
		} else {
			tmpl, err := texttemplate.New(name).Option("missingkey=error").Parse(src)
			if err != nil {
				return nil, fmt.Errorf("template %s: %w", from, err)
			}
			t.text[name] = tmpl
		}
	}
	// Render every template once with sample data, so a template that
	// names an unknown field fails at start-up, not at the first send.
	sample := Verification{Medium: "email", Address: "alice@example.org", Token: "123456", Link: "https://id.example.org/x", ServerName: "id.example.org", PublicBaseURL: "https://id.example.org"}
	for _, name := range []string{TemplateEmailSubject, TemplateEmailText, TemplateEmailHTML, TemplateSMS} {
		if _, err := t.render(name, sample); err != nil {
			return nil, err
		}
	}
	inv := Invite{To: "alice@example.org", Token: "sample-invite-token", RoomID: "!r:example.org", RoomName: "Room", RoomType: "room", SenderID: "@bob:example.org",
		SenderDisplayName: "Bob", Link: "https://app.example.org/#/room/x", ServerName: "id.example.org"}
	for _, name := range []string{TemplateInviteSubject, TemplateInviteText, TemplateInviteHTML} {
		if _, err := t.render(name, inv); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{TemplatePageSuccess, TemplatePageFailure} {
		if _, err := t.render(name, Page{ServerName: "id.example.org", Message: "x"}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func readTemplate(dir, name string) (src, from string, err error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err == nil {
			return string(b), p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("templates_dir: %w", err)
		}
	}
	b, err := fs.ReadFile(web.Templates, web.TemplateDir+"/"+name)
	if err != nil {
		return "", "", fmt.Errorf("embedded template %s: %w", name, err)
	}
	return string(b), "embedded " + name, nil
}

// render executes the template name with data.
func (t *Templates) render(name string, data any) (string, error) {
	var buf bytes.Buffer
	if err := t.execute(&buf, name, data); err != nil {
		return "", err
	}
	return buf.String(), nil
}

func (t *Templates) execute(w io.Writer, name string, data any) error {
	if tmpl, ok := t.html[name]; ok {
		if err := tmpl.Execute(w, data); err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		return nil
	}
	if tmpl, ok := t.text[name]; ok {
		if err := tmpl.Execute(w, data); err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("no template %s", name)
}

// RenderPage writes one of the submitToken result pages (TemplatePage*).
func (t *Templates) RenderPage(w io.Writer, name string, p Page) error {
	if _, ok := t.html[name]; !ok {
		return fmt.Errorf("no page template %s", name)
	}
	return t.execute(w, name, p)
}

// oneLine makes a rendered header value safe: line breaks and other
// control characters become spaces, runs of space collapse, and the result
// is trimmed, so no template can add a header.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\u2028' || r == '\u2029' || r == '\u0085' {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}
