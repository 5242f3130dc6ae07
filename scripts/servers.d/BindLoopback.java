// BindLoopback.java: start DynamoDB Local 3.x with its normal flags, bound to 127.0.0.1 only.
// DynamoDB Local has no host flag and listens on all interfaces; this launcher builds the server
// exactly as ServerRunner does, then rebinds Jetty's connector(s) to loopback before starting.
import java.lang.reflect.Field;
import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

public final class BindLoopback {
    public static void main(String[] args) throws Exception {
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        Field f = DynamoDBProxyServer.class.getDeclaredField("server");   // private final Server server
        f.setAccessible(true);
        Connector[] cs = ((Server) f.get(proxy)).getConnectors();
        if (cs.length == 0) throw new IllegalStateException("no connector to rebind");
        for (Connector c : cs) ((ServerConnector) c).setHost("127.0.0.1");
        proxy.start();
        System.out.println("DynamoDB Local ready on 127.0.0.1");
        proxy.join();
    }
}
