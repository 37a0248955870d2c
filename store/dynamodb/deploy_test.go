package dynamodb_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"go.yaml.in/yaml/v3"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/dynamodb"
)

// tableSpec is a table's key schema and TTL attribute, as a deployment
// file declares it.
type tableSpec struct {
	attrs  map[string]string // name -> type
	hash   string
	rng    string
	ttl    string
	ttlOn  bool
	policy []string // the IAM actions granted
}

func cfnSpec(t *testing.T, path string) tableSpec {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Resources map[string]struct {
			Type       string `yaml:"Type"`
			Properties struct {
				AttributeDefinitions []struct {
					Name string `yaml:"AttributeName"`
					Type string `yaml:"AttributeType"`
				} `yaml:"AttributeDefinitions"`
				KeySchema []struct {
					Name string `yaml:"AttributeName"`
					Type string `yaml:"KeyType"`
				} `yaml:"KeySchema"`
				TTL struct {
					Name    string `yaml:"AttributeName"`
					Enabled bool   `yaml:"Enabled"`
				} `yaml:"TimeToLiveSpecification"`
				PolicyDocument struct {
					Statement []struct {
						Action []string `yaml:"Action"`
					} `yaml:"Statement"`
				} `yaml:"PolicyDocument"`
			} `yaml:"Properties"`
		} `yaml:"Resources"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	spec := tableSpec{attrs: map[string]string{}}
	tables := 0
	for _, r := range doc.Resources {
		switch r.Type {
		case "AWS::DynamoDB::Table":
			tables++
			p := r.Properties
			for _, a := range p.AttributeDefinitions {
				spec.attrs[a.Name] = a.Type
			}
			for _, k := range p.KeySchema {
				switch k.Type {
				case "HASH":
					spec.hash = k.Name
				case "RANGE":
					spec.rng = k.Name
				}
			}
			spec.ttl, spec.ttlOn = p.TTL.Name, p.TTL.Enabled
		case "AWS::IAM::ManagedPolicy":
			for _, s := range r.Properties.PolicyDocument.Statement {
				spec.policy = append(spec.policy, s.Action...)
			}
		}
	}
	if tables != 1 {
		t.Fatalf("%s declares %d tables, want 1", path, tables)
	}
	return spec
}

func terraformSpec(t *testing.T, path string) tableSpec {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Resource struct {
			Tables map[string]struct {
				Hash  string `json:"hash_key"`
				Range string `json:"range_key"`
				Attrs []struct {
					Name string `json:"name"`
					Type string `json:"type"`
				} `json:"attribute"`
				TTL struct {
					Name    string `json:"attribute_name"`
					Enabled bool   `json:"enabled"`
				} `json:"ttl"`
			} `json:"aws_dynamodb_table"`
		} `json:"resource"`
		Data struct {
			Policies map[string]struct {
				Statement []struct {
					Actions []string `json:"actions"`
				} `json:"statement"`
			} `json:"aws_iam_policy_document"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(doc.Resource.Tables) != 1 {
		t.Fatalf("%s declares %d tables, want 1", path, len(doc.Resource.Tables))
	}
	spec := tableSpec{attrs: map[string]string{}}
	for _, tb := range doc.Resource.Tables {
		for _, a := range tb.Attrs {
			spec.attrs[a.Name] = a.Type
		}
		spec.hash, spec.rng, spec.ttl, spec.ttlOn = tb.Hash, tb.Range, tb.TTL.Name, tb.TTL.Enabled
	}
	for _, p := range doc.Data.Policies {
		for _, s := range p.Statement {
			spec.policy = append(spec.policy, s.Actions...)
		}
	}
	return spec
}

// TestDeployFiles: every shipped table definition parses, declares the key
// schema and TTL attribute of its documented dynamodb.Options, grants the
// store's three actions, and the store works on a table created from it.
func TestDeployFiles(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "aws")
	endpoint := startMinidyn(t)
	c := newClient(t, endpoint, nil)
	for _, tc := range []struct {
		file string
		spec func(*testing.T, string) tableSpec
		opts dynamodb.Options
	}{
		{"cloudformation/dedicated.yaml", cfnSpec, dynamodb.Options{PartitionKey: "pk", TTLAttribute: "ttl"}},
		{"cloudformation/single-table.yaml", cfnSpec, singleTable},
		{"terraform/dedicated/main.tf.json", terraformSpec, dynamodb.Options{PartitionKey: "pk", TTLAttribute: "ttl"}},
		{"terraform/single-table/main.tf.json", terraformSpec, singleTable},
	} {
		t.Run(tc.file, func(t *testing.T) {
			spec := tc.spec(t, filepath.Join(dir, tc.file))
			if spec.hash != tc.opts.PartitionKey || spec.rng != tc.opts.SortKey || !spec.ttlOn || spec.ttl != tc.opts.TTLAttribute {
				t.Fatalf("spec %+v does not match options %+v", spec, tc.opts)
			}
			wantAttrs := map[string]string{spec.hash: "S"}
			if spec.rng != "" {
				wantAttrs[spec.rng] = "S"
			}
			if len(spec.attrs) != len(wantAttrs) || spec.attrs[spec.hash] != "S" || (spec.rng != "" && spec.attrs[spec.rng] != "S") {
				t.Fatalf("attribute definitions %v, want %v", spec.attrs, wantAttrs)
			}
			granted := map[string]bool{}
			for _, a := range spec.policy {
				granted[a] = true
			}
			for _, a := range []string{"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"} {
				if !granted[a] {
					t.Errorf("policy %v lacks %s", spec.policy, a)
				}
			}
			// Create the table exactly as declared, then use the store on it.
			opts := tc.opts
			opts.Table = randomName("levee-deploy-")
			in := &ddb.CreateTableInput{TableName: aws.String(opts.Table), BillingMode: types.BillingModePayPerRequest}
			for name, typ := range spec.attrs {
				in.AttributeDefinitions = append(in.AttributeDefinitions, types.AttributeDefinition{AttributeName: aws.String(name), AttributeType: types.ScalarAttributeType(typ)})
			}
			in.KeySchema = []types.KeySchemaElement{{AttributeName: aws.String(spec.hash), KeyType: types.KeyTypeHash}}
			if spec.rng != "" {
				in.KeySchema = append(in.KeySchema, types.KeySchemaElement{AttributeName: aws.String(spec.rng), KeyType: types.KeyTypeRange})
			}
			ctx := context.Background()
			if _, err := c.CreateTable(ctx, in); err != nil {
				t.Fatal(err)
			}
			// CreateTable accepts the declared table as matching the options.
			if err := dynamodb.CreateTable(ctx, c, opts); err != nil {
				t.Fatalf("CreateTable over the declared table: %v", err)
			}
			s, err := dynamodb.New(c, opts)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			if res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
				t.Fatalf("Claim = %+v, %v", res, err)
			}
			if err := s.Complete(ctx, "k", 1, idempotency.Response{Status: 201}, now, now.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if rec, err := s.Lookup(ctx, "k", now); err != nil || rec.Response.Status != 201 {
				t.Fatalf("Lookup = %+v, %v", rec, err)
			}
		})
	}
}
