//go:build dynamodb

package main

import (
	"context"
	"errors"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/session"
	awsdynamodb "github.com/aws/aws-sdk-go/service/dynamodb"
	"github.com/kvtools/dynamodb"
	"github.com/kvtools/valkeyrie"
)

const dynamoTable = "kvbench_valkeyrie"

// valkeyrie's DynamoDB store expects its table to exist (string hash key "id"): create it.
func init() {
	openers["dynamodb"] = opener{
		storeName: dynamodb.StoreName,
		config:    func(string) valkeyrie.Config { return &dynamodb.Config{Bucket: dynamoTable} },
		prepare: func(ctx context.Context, endpoint string) error {
			sess, err := session.NewSession(&aws.Config{Endpoint: aws.String(endpoint)})
			if err != nil {
				return err
			}
			svc := awsdynamodb.New(sess)
			_, err = svc.CreateTableWithContext(ctx, &awsdynamodb.CreateTableInput{
				TableName: aws.String(dynamoTable),
				AttributeDefinitions: []*awsdynamodb.AttributeDefinition{
					{AttributeName: aws.String("id"), AttributeType: aws.String("S")},
				},
				KeySchema: []*awsdynamodb.KeySchemaElement{
					{AttributeName: aws.String("id"), KeyType: aws.String("HASH")},
				},
				BillingMode: aws.String("PAY_PER_REQUEST"),
			})
			var aerr awserr.Error
			if errors.As(err, &aerr) && aerr.Code() == awsdynamodb.ErrCodeResourceInUseException {
				err = nil
			}
			if err != nil {
				return err
			}
			return svc.WaitUntilTableExistsWithContext(ctx, &awsdynamodb.DescribeTableInput{TableName: aws.String(dynamoTable)})
		},
	}
}
