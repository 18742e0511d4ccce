package policy

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// TestCredentialExamplePolicy pins testdata/policies/cloud-credentials.yaml.
func TestCredentialExamplePolicy(t *testing.T) {
	p, err := Load("../../testdata/policies/cloud-credentials.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &OAuth2{TokenURL: "https://auth.corp.example/token", Grant: GrantClientCredentials, ClientID: "agent",
		ClientSecret: "CORP_CLIENT_SECRET", Scopes: []string{"read", "write"}, Audience: "https://api.corp.example"}
	if got := p.Rules[0].OAuth2; !reflect.DeepEqual(got, want) {
		t.Fatalf("corp-api oauth2: %+v", got)
	}
	if o := p.Rules[1].OAuth2; o.Grant != GrantRefreshToken || o.RefreshToken != "CALENDAR_REFRESH" {
		t.Fatalf("calendar oauth2: %+v", o)
	}
	if o := p.Rules[2].OAuth2; o.Grant != GrantJWTBearer || o.PrivateKey != "GCP_SA_KEY" || o.ClientID != "" {
		t.Fatalf("gcs oauth2: %+v", o)
	}
	wantSig := &AWSSigV4{Region: "us-east-1", Service: "s3", AccessKeyIDSecret: "AWS_ACCESS_KEY_ID", SecretAccessKey: "AWS_SECRET_ACCESS_KEY"}
	if got := p.Rules[3].AWSSigV4; !reflect.DeepEqual(got, wantSig) {
		t.Fatalf("s3 aws_sigv4: %+v", got)
	}
	for _, r := range p.Rules {
		if !r.NeedsIntercept() {
			t.Errorf("rule %s does not intercept", r.Name)
		}
	}
}

// TestExplainCredentials: explain shows the blocks without secrets.
func TestExplainCredentials(t *testing.T) {
	p, err := Load("../../testdata/policies/cloud-credentials.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ url, typ, value string }{
		{"https://api.corp.example/v1/x", "oauth2", "Bearer <oauth2:agent@auth.corp.example>"},
		{"https://storage.googleapis.com/b/o", "oauth2", "Bearer <oauth2:GCP_SA_KEY@oauth2.googleapis.com>"},
		{"https://bucket.s3.us-east-1.amazonaws.com/key", "aws_sigv4", "<aws_sigv4:s3/us-east-1>"},
	} {
		e, err := p.Explain("GET", c.url)
		if err != nil {
			t.Fatal(err)
		}
		want := []ExplainHeader{{Name: "Authorization", Type: c.typ, Value: c.value}}
		if !e.Allowed || !reflect.DeepEqual(e.Headers, want) {
			t.Errorf("%s: allowed %v headers %+v, want %+v", c.url, e.Allowed, e.Headers, want)
		}
	}
}

// TestBadCredentialPolicies: each file under bad/credentials holds one
// mistake, reported at its position.
func TestBadCredentialPolicies(t *testing.T) {
	tests := []struct{ file, wantErr string }{
		{"oauth2_and_sigv4.yaml", "6:16: rules[0].aws_sigv4: a rule cannot have both oauth2 and aws_sigv4"},
		{"oauth2_with_authorization.yaml", "6:7: rules[0].headers: a header sets Authorization, which oauth2 sets"},
		{"sigv4_with_authorization.yaml", "7:7: rules[0].headers: a header sets Authorization, which aws_sigv4 sets"},
		{"oauth2_bad_grant.yaml", "7:14: rules[0].oauth2.grant: \"password\" is not one of client_credentials, refresh_token, jwt_bearer"},
		{"oauth2_literal_secret.yaml", "9:22: rules[0].oauth2.client_secret: expect one secret placeholder such as \"{CLIENT_SECRET}\""},
		{"oauth2_missing_refresh.yaml", "6:7: rules[0].oauth2.refresh_token: required by grant refresh_token"},
		{"oauth2_unknown_field.yaml", "10:7: rules[0].oauth2.scope: unknown field; expect one of token_url, grant, client_id, client_secret, refresh_token, private_key, scopes, audience"},
		{"oauth2_bad_url.yaml", "6:18: rules[0].oauth2.token_url: \"ftp://auth.example.com/token\" is not an https:// URL"},
		{"sigv4_missing_secret.yaml", "6:7: rules[0].aws_sigv4.secret_access_key: required"},
		{"sigv4_literal_secret.yaml", "9:26: rules[0].aws_sigv4.secret_access_key: expect one secret placeholder such as \"{AWS_SECRET_ACCESS_KEY}\""},
		{"sigv4_direct.yaml", "6:16: rules[0].aws_sigv4: a direct rule bypasses the proxy, so it cannot use aws_sigv4"},
	}
	dir := "../../testdata/policies/bad/credentials/"
	files, _ := filepath.Glob(dir + "*.yaml")
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.file] = true
		t.Run(tt.file, func(t *testing.T) {
			_, err := Load(dir + tt.file)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want policy.Errors, got %v", err)
			}
			if len(errs.Errs()) != 1 {
				t.Fatalf("want exactly one error, got:\n%v", err)
			}
			if want := dir + tt.file + ":" + tt.wantErr; !strings.Contains(err.Error(), want) {
				t.Fatalf("error\n%v\nwant it to contain\n%s", err, want)
			}
		})
	}
	for _, f := range files {
		if !covered[filepath.Base(f)] {
			t.Errorf("%s has no entry in the table", f)
		}
	}
}

// TestCredentialSchema keeps the oauth2 and awsSigV4 definitions of
// schema.json in step with the parser.
func TestCredentialSchema(t *testing.T) {
	var s struct {
		Defs map[string]struct {
			Properties map[string]struct {
				Enum []string `json:"enum"`
			} `json:"properties"`
			Required []string `json:"required"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatal(err)
	}
	keys := func(def string) []string {
		var out []string
		for k := range s.Defs[def].Properties {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	sorted := func(xs []string) []string { ys := slices.Clone(xs); sort.Strings(ys); return ys }
	if got, want := keys("oauth2"), sorted(oauth2Fields); !slices.Equal(got, want) {
		t.Errorf("oauth2 fields: schema %v, parser %v", got, want)
	}
	if got, want := keys("awsSigV4"), sorted(sigv4Fields); !slices.Equal(got, want) {
		t.Errorf("aws_sigv4 fields: schema %v, parser %v", got, want)
	}
	if got := s.Defs["oauth2"].Properties["grant"].Enum; !slices.Equal(got, Grants) {
		t.Errorf("grant enum: schema %v, parser %v", got, Grants)
	}
}
