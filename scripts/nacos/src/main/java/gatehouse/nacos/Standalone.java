// Starts the Nacos server modules on the classpath as one Spring Boot application.
// Run with -Dnacos.standalone=true -Dnacos.home=DIR (scripts/nacos.sh does).
package gatehouse.nacos;

import com.alibaba.nacos.core.code.ControllerMethodsCache;
import javax.annotation.PostConstruct;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.actuate.autoconfigure.security.servlet.ManagementWebSecurityAutoConfiguration;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.security.servlet.SecurityAutoConfiguration;
import org.springframework.boot.autoconfigure.security.servlet.UserDetailsServiceAutoConfiguration;
import org.springframework.boot.web.servlet.ServletComponentScan;
import org.springframework.scheduling.annotation.EnableScheduling;

// Nacos's console module (not on Maven Central) brings the web security setup; without it Spring
// Boot's default would put HTTP basic auth on every request, so the defaults are left out and the
// open API answers as an unauthenticated Nacos (nacos.core.auth.enabled=false) does.
@SpringBootApplication(
        scanBasePackages = "com.alibaba.nacos",
        exclude = {
            SecurityAutoConfiguration.class,
            ManagementWebSecurityAutoConfiguration.class,
            UserDetailsServiceAutoConfiguration.class
        })
@ServletComponentScan(basePackages = "com.alibaba.nacos")
@EnableScheduling
public class Standalone {
    @Autowired private ControllerMethodsCache methods;

    // The console module also registers the HTTP controllers with Nacos's request filters; a
    // request to a controller missing from this cache is answered 501 "no such api".
    @PostConstruct
    void registerControllers() {
        methods.initClassMethod("com.alibaba.nacos.core.controller");
        methods.initClassMethod("com.alibaba.nacos.naming.controllers");
        methods.initClassMethod("com.alibaba.nacos.config.server.controller");
    }

    public static void main(String[] args) {
        SpringApplication.run(Standalone.class, args);
    }
}
